"""Request and response schemas of the HTTP API (requests validated; responses documented)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictStr, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from scalerec.data.ids import MAX_ID_LENGTH, id_problem

Scalar = Union[str, int, float, bool]
#: Epoch seconds from JSON: a finite number, never a boolean (true is not 1970-01-01T00:00:01).
EpochNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def id_value(value: str) -> str:
    """``value`` if it keeps the id policy (scalerec.data.ids), else a pydantic error naming it."""
    problem = id_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_id", "{problem}", {"problem": problem})
    return value


#: The id policy as a JSON Schema pattern, for the docs only (id_value checks it, with its messages):
#: no control character (C0, DEL, C1), no '/', no whitespace at either end.
ID_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f/]([^\x00-\x1f\x7f-\x9f/]*[^\s\x00-\x1f\x7f-\x9f/])?$"
_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}

#: A user/item/session id in a request body: the length in pydantic's core, then the policy.
BodyId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(id_value),
                   WithJsonSchema(_ID_SCHEMA)]
#: An ISO 8601 time in a body: parsed by the service (with its message), documented as date-time.
IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


class ErrorBody(BaseModel):
    type: str = Field(description="stable machine name, e.g. validation_error, unknown_item, rate_limited")
    message: str = Field(description="what went wrong and what to do")
    details: Any = Field(None, description="structured details (e.g. the fields that failed), or null")


class ErrorResponse(BaseModel):
    """The one error shape of the API."""

    error: ErrorBody


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendedItem(BaseModel):
    item_id: str
    score: float | None
    reason: str = Field(description="model | similar_to:<item> | popular | trending | boosted (rank: unranked)")


class RecommendationList(BaseModel):
    recommendation_id: str = Field(description="echo it in events (recommendation_id) for attribution")
    model_version: str
    strategy: str = Field(description="model | fold_in | fallback | popular | trending")
    user_id: str | None = None
    item_id: str | None = None
    items: list[RecommendedItem]
    placement: str | None = Field(None, description="the placement asked for (placement=), echoed")
    variant: str | None = Field(None, description="the experiment variant that served this list, or null")


class RankRequest(_In):
    user_id: BodyId
    item_ids: list[BodyId] = Field(min_length=1, max_length=5000)
    available_only: bool = True


class RankResponse(RecommendationList):
    removed: list[str] = Field(default_factory=list, description="ids dropped as unavailable or deleted")


class SessionRequest(_In):
    item_ids: list[BodyId] = Field(min_length=1, max_length=1000, description="items the visitor touched, oldest first")
    event_types: list[str] | None = Field(None, description="one per item (default view)")
    n: int = Field(20)  # 1..[serving] max_n, checked by the service with the query's message
    category: list[str] | None = None
    exclude_category: list[str] | None = None
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    available_only: bool = True
    exclude_seen: bool = True
    max_per_category: int | None = Field(None, ge=1, le=1000)
    context: dict[str, Scalar] | None = None
    placement: str | None = Field(None, min_length=1, max_length=100, description="where the list is shown")
    session_id: BodyId | None = Field(None, description="the visitor's session id: a unit of experiments and attribution")


class EventIn(_In):
    # One of user_id / session_id names who acted (the service answers 422 otherwise), said as "not
    # both absent or null": an anyOf of two branches made typed-client generators split EventIn in two.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {
        "properties": {"user_id": {"type": "null"}, "session_id": {"type": "null"}},
    }})

    user_id: BodyId | None = Field(None, description="null for an anonymous visitor (then session_id)")
    item_id: BodyId
    event_type: str = Field(min_length=1, max_length=64, description="view, add_to_cart, purchase, rating, ... ([events.types])")
    timestamp: IsoTime | EpochNumber | None = Field(
        None, description="ISO 8601 or epoch seconds (milliseconds from 1e11); default now; at most "
                          "[data] max_clock_skew_seconds ahead of the server clock"
    )
    # values are stored as float32: the validator refuses what float32 cannot hold
    value: float | None = Field(
        None, allow_inf_nan=False, ge=-3.4028234663852886e38, le=3.4028234663852886e38,
        description="rating or quantity; default 1",
    )
    session_id: BodyId | None = None
    recommendation_id: str | None = Field(None, max_length=64)
    context: dict[str, Scalar] | None = None


class EventBatch(_In):
    events: list[EventIn] = Field(min_length=1, description="up to serving.max_batch_events (10,000) events")


class EventsAccepted(BaseModel):
    accepted: int


class UserIn(_In):
    attributes: dict[str, Scalar | None] | None = None
    created_at: IsoTime | None = None


class ItemIn(_In):
    title: str | None = None
    description: str | None = None
    categories: list[str] | None = None
    price: float | None = Field(None, ge=0)
    available: bool = True
    attributes: dict[str, Scalar | None] | None = None
    created_at: IsoTime | None = None


class ItemPatch(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    title: str | None = None
    description: str | None = None
    categories: list[str] | None = None
    price: float | None = Field(None, ge=0)
    available: bool = Field(None, description="true or false (never null); left as it is when absent")  # type: ignore[assignment]
    attributes: dict[str, Scalar | None] | None = None


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelsResponse(BaseModel):
    serving: str | None
    versions: list[dict[str, Any]]
