"""The ceiling of the serving benchmark: a FastAPI hello world served the same way (uvicorn, same workers)."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello/{user_id}")
async def hello(user_id: str) -> dict[str, str]:
    return {"hello": user_id}
