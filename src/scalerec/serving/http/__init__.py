"""HTTP adapter over RecommendService: FastAPI app factory, one router per resource, one error shape."""

from scalerec.serving.http.app import create_app

__all__ = ["create_app"]
