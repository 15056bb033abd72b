"""One validated Settings object, read from scalerec.toml and SCALEREC_* environment variables."""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from scalerec.errors import ConfigError

CONFIG_FILE_ENV = "SCALEREC_CONFIG"
DEFAULT_CONFIG_FILE = "scalerec.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EventType(_Section):
    """How one event type counts in the interaction matrix."""

    weight: float = Field(1.0, gt=0, description="contribution of one event to the matrix cell")
    polarity: Literal[1, -1] = Field(1, description="-1 for negative types (return, dislike) that subtract")
    use_value: bool = Field(False, description="multiply the weight by the event's value (ratings, quantities)")


def _default_event_types() -> dict[str, EventType]:
    return {
        "view": EventType(weight=1.0),
        "click": EventType(weight=1.0),
        "add_to_cart": EventType(weight=4.0),
        "purchase": EventType(weight=10.0),
        "rating": EventType(weight=1.0, use_value=True),
        "like": EventType(weight=4.0),
        "dislike": EventType(weight=4.0, polarity=-1),
        "return": EventType(weight=10.0, polarity=-1),
    }


class DataSettings(_Section):
    dir: Path = Field(Path("data"), description="the data directory holding catalog.db, events/, models/")
    catalog_url: str | None = Field(
        None, description="catalogue store URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (shared by "
        "several machines); default sqlite:///<dir>/catalog.db"
    )
    store_url: str | None = Field(
        None, description="object store shared by several machines for model versions: s3://BUCKET/PREFIX "
        "(?endpoint_override=HOST:PORT&scheme=http for an S3-compatible server) or a path; each machine keeps "
        "a local cache in <dir>/models; default none (models only in <dir>/models)"
    )
    events_url: str | None = Field(
        None, description="the event log on an object store shared by several machines: s3://BUCKET/PREFIX "
        "(?endpoint_override=HOST:PORT&scheme=http for an S3-compatible server) or a path; each machine caches "
        "what it reads in <dir>/cache/events; default none (the log in <dir>/events)"
    )
    import_chunk_rows: int = Field(1_000_000, ge=1_000, description="rows read per chunk on import")
    compact_min_files: int = Field(8, ge=2, description="compact a day partition once it has this many files")
    max_clock_skew_seconds: float = Field(
        300.0, ge=0, description="events timed more than this ahead of the server clock are rejected"
    )

    @field_validator("catalog_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("catalogue URLs are sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return v

    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.dir / 'catalog.db'}"


class EventSettings(_Section):
    types: dict[str, EventType] = Field(default_factory=_default_event_types)
    allow_unknown_types: bool = Field(False, description="accept event types not listed in [events.types]")
    unknown_type_weight: float = Field(1.0, gt=0, description="weight of unlisted types when allowed")

    @field_validator("types", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        # Types named in the config file are added to (or override) the defaults, so a shop
        # that adds "wishlist" keeps view/purchase/...; set a default's weight to change it.
        if isinstance(v, dict):
            return {**_default_event_types(), **v}
        return v

    @field_validator("types")
    @classmethod
    def _check_names(cls, v: dict[str, EventType]) -> dict[str, EventType]:
        for name in v:
            if not name or not name.replace("_", "").isalnum() or name != name.lower():
                raise ValueError(f"event type name {name!r} must be lower-case letters, digits and '_'")
        if not v:
            raise ValueError("at least one event type must be configured")
        return v


class MatrixSettings(_Section):
    window_days: float | None = Field(None, gt=0, description="only events from the last N days; none = all")
    half_life_days: float | None = Field(None, gt=0, description="time decay half-life; none = no decay")
    min_user_interactions: int = Field(1, ge=1)
    min_item_interactions: int = Field(1, ge=1)
    binary: bool = Field(False, description="store 1 for every positive cell instead of the summed weight")
    cap: float | None = Field(None, gt=0, description="clip each summed cell at this value; none = no clip")
    # Off by default: it helped on Online Retail but lost beyond the intervals on the synthetic shop
    # (BENCHMARKS.md, issue 10, "Cell convention").
    normalise: bool = Field(
        False, description="divide each cell by the strongest positive event-type weight in the data (cells of one such event = 1)"
    )
    # "floored": the global clock (best on Online Retail: 0.128 vs 0.114 Recall@20 per-user) that
    # never lets a user's row underflow to zero (it zeroed 278 of 609 users' rows on one public set).
    recency_reference: Literal["floored", "user", "global"] = Field(
        "floored", description="recency age from the data's newest event (floored: never below 2^-20), or the user's own newest"
    )
    rating_rule: Literal["threshold", "raw", "binary", "centered"] = Field(
        "threshold", description="how a rating's value counts: >= threshold positive, as is, 1, or minus the user's mean"
    )
    rating_threshold: float | None = Field(
        None, description="ratings >= this are positive; none = the upper 40% of the observed scale (4-5 of 1-5)"
    )
    rating_negative_weight: float = Field(
        0.0, ge=0, description="a below-threshold (or below-mean) rating subtracts this x its type weight; 0 = ignored"
    )
    rating_types: list[str] = Field(
        default_factory=lambda: ["rating"], description="event types whose value is an explicit rating"
    )


class ModelSettings(_Section):
    ease_max_items: int = Field(20_000, ge=10, description="EASE refuses catalogues larger than this")
    enabled: list[str] = Field(
        default_factory=lambda: ["popular", "itemknn", "rp3beta", "ease", "als"],
        description="model families the training pipeline searches",
    )


class TrainingSettings(_Section):
    primary_metric: str = "ndcg@20"
    split: Literal["auto", "temporal", "leave_last", "random", "users"] = "auto"
    test_days: float = Field(30.0, gt=0)
    holdout_share: float = Field(0.1, gt=0, lt=1, description="auto split: share of the events held out")
    min_test_users: int = Field(1000, ge=1, description="auto split: users the test window must hold")
    max_test_user_share: float = Field(
        0.2, gt=0, le=1, description="auto split: min_test_users is at most this share of the users"
    )
    max_holdout_share: float = Field(
        0.3, gt=0, lt=1, description="auto split: the largest window tried before holding out per user"
    )
    trials: int = Field(20, ge=1)
    timeout_minutes: float | None = Field(None, gt=0)
    jobs: int = Field(1, ge=1)
    # 0.02: a non-inferiority margin; at 0 a tie with production can never be shown "not worse"
    promotion_tolerance: float = Field(0.02, ge=0, description="max relative drop vs production still promoted")
    # 100: below it a per-user NDCG/recall interval is about as wide as the metric itself, so no tolerance can be shown
    min_gate_users: int = Field(100, ge=1, description="the gate refuses to decide on fewer held-out users")
    # "second-fold": a family the validation part cannot tell from the leader replaces it only when a second
    # fold shows it better (docs/training.md, "Choosing between finalists")
    tie_break: Literal["second-fold", "leader"] = Field(
        "second-fold", description="families tied on validation: re-scored on a second fold (or the leader, unchecked)"
    )
    keep_archived: int = Field(5, ge=0)
    schedule_interval_minutes: float | None = Field(None, gt=0)
    schedule_min_new_events: int = Field(0, ge=0)


class EvaluationSettings(_Section):
    """Uncertainty of offline figures: bootstrap over users, seeded."""

    confidence: float = Field(0.95, gt=0, lt=1, description="two-sided coverage of every interval")
    bootstrap_samples: int = Field(1000, ge=0, description="resamples of the users per interval (0 = no intervals)")
    seed: int = Field(0, description="seed of the resampling: the same seed gives the same intervals")


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    reuse_port: bool = Field(
        True, description="with several workers on Linux, a SO_REUSEPORT socket per worker (false: uvicorn's one shared socket)"
    )
    exact_index_max_items: int = Field(50_000, ge=1, description="above this, FAISS ANN retrieval")
    precomputed_k: int = Field(
        50, ge=0, description="each known user's top this many unseen items precomputed per model version (0: off)"
    )
    precomputed_max_users: int = Field(
        2_000_000, ge=0, description="precomputed lists for at most this many users (those with the most history)"
    )
    precomputed_max_mb: int = Field(
        2048, ge=0, description="precomputed lists take at most this much disk and page cache (fewer users when longer)"
    )
    max_batch_events: int = Field(10_000, ge=1)
    max_n: int = Field(500, ge=1)
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    history_events: int = Field(200, ge=1, description="recent events used for fold-in")
    prune_batch_rows: int = Field(
        2_000, ge=100, description="rows deleted per short transaction when pruning serving tables"
    )
    change_retention_hours: float = Field(
        24.0, gt=0, description="item changes in the serving change feed older than this are pruned"
    )
    log_retention_days: float = Field(30.0, gt=0, description="recommendation logs older than this are deleted")
    log_max_mb: float = Field(256.0, gt=0, description="a recommendation log file is rotated past this size")
    idempotency_retention_seconds: float = Field(
        86_400.0, gt=0, description="how long an Idempotency-Key of POST /v1/events is remembered"
    )


class OnlineSettings(_Section):
    """Impressions, attribution and experiments (docs/experiments.md)."""

    attribution_window_hours: float = Field(
        24.0, gt=0, description="an event on a shown item by the same user within this long after the list is attributed to it"
    )
    click_types: list[str] = Field(default_factory=lambda: ["click"], description="event types counted as clicks")
    cart_types: list[str] = Field(default_factory=lambda: ["add_to_cart"], description="event types counted as add-to-cart")
    purchase_types: list[str] = Field(default_factory=lambda: ["purchase"], description="event types counted as conversions")
    impressions_flush_s: float = Field(5.0, gt=0, description="served lists are written as Parquet this often")
    min_units: int = Field(100, ge=1, description="an experiment report decides nothing with fewer users per variant")


class ClusterServeSettings(_Section):
    """Ray Serve autoscaling of the recommendation service (`scalerec serve --cluster ...`)."""

    min_replicas: int = Field(1, ge=0, description="replicas kept running even when idle")
    max_replicas: int = Field(4, ge=1, description="most replicas under load")
    target_ongoing_requests: float = Field(2.0, gt=0, description="in-flight requests per replica to aim for")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica")

    @model_validator(mode="after")
    def _check_range(self) -> "ClusterServeSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self


class ClusterSettings(_Section):
    address: str | None = Field(None, description="'auto' or 'ray://host:port'; none = local execution")
    task_retries: int = Field(3, ge=0, description="times Ray reruns a task whose worker or node died")
    serve: ClusterServeSettings = Field(default_factory=ClusterServeSettings)


class PlacementBoost(_Section):
    """Multiply (and/or add to) the score of candidates matching ``rule``; a factor below 1 buries."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="shown as boosted:<name>")
    rule: str = Field(description="the condition, in the rule language (docs/merchandising.md)")
    multiply: float = Field(1.0, gt=0, le=1000, description="score factor (>1 boosts, <1 buries)")
    add: float = Field(0.0, ge=-1e6, le=1e6, description="added to the score after the factor")


class PlacementPin(_Section):
    item_id: str = Field(min_length=1, max_length=256)
    position: int = Field(ge=1, le=10_000, description="1-based position in the list")


class PlacementPromotion(_Section):
    """Reserve ``slots`` positions for items matching ``rule`` (reason promoted:<name>)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    rule: str
    slots: int = Field(1, ge=1, le=100)
    positions: list[Annotated[int, Field(ge=1, le=10_000)]] | None = Field(
        None, description="1-based positions; default: the first free ones"
    )


class PlacementExploration(_Section):
    """A share of the slots for new or under-exposed items (reason exploration)."""

    share: float = Field(0.1, gt=0, le=0.5, description="share of the n slots")
    max_age_days: float | None = Field(30.0, gt=0, description="items created this recently count as new")
    max_popularity_quantile: float | None = Field(
        0.2, gt=0, le=1, description="items in this lowest share of popularity count as under-exposed"
    )


class PlacementDiversity(_Section):
    """At most ``max_per`` items per ``by`` group (category or attributes.<key>), or MMR over item vectors."""

    by: str = Field("category", pattern=r"^(category|attributes\.[A-Za-z0-9_\-]+)$")
    max_per: int | None = Field(None, ge=1, le=1000)
    mmr_lambda: float | None = Field(None, ge=0, le=1, description="relevance weight of MMR (1 = no diversity)")

    @model_validator(mode="after")
    def _one_kind(self) -> "PlacementDiversity":
        if self.max_per is None and self.mmr_lambda is None:
            raise ValueError("set max_per (a cap per group) or mmr_lambda (MMR over item vectors)")
        return self


class PlacementFilters(_Section):
    """The list filters of a placement (as the list endpoints' query parameters)."""

    category: list[str] | None = Field(None, description="keep items in any of these categories")
    exclude_category: list[str] | None = Field(None, description="drop items in any of these categories")
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    available_only: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> "PlacementFilters":
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(f"min_price {self.min_price} is above max_price {self.max_price}; swap them or drop one")
        return self


class PlacementSettings(_Section):
    """A named list configuration (``[[placements]]``, or stored with ``/v1/placements``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    strategy: Literal["personal", "similar", "complementary", "popular", "trending", "session"] = "personal"
    description: str = Field("", max_length=500)
    n: int = Field(10, ge=1, le=10_000, description="list length when the request gives no n")
    filter: str | None = Field(None, description="a rule every item must match")
    filters: PlacementFilters = Field(default_factory=PlacementFilters)
    boosts: list[PlacementBoost] = Field(default_factory=list)
    pins: list[PlacementPin] = Field(default_factory=list)
    promotions: list[PlacementPromotion] = Field(default_factory=list)
    blocklist: list[str] = Field(default_factory=list, description="item ids never served here")
    exploration: PlacementExploration | None = None
    diversity: PlacementDiversity | None = None
    fallbacks: list[Literal["trending", "popular"]] = Field(default_factory=lambda: ["trending", "popular"])
    exclude_seen: bool = True

    @model_validator(mode="after")
    def _check_rules(self) -> "PlacementSettings":
        # every rule parsed when the placement is read or saved (RuleError names field and position)
        from scalerec.serving.rules import parse_rule

        if self.filter is not None:
            parse_rule(self.filter, field="filter")
        for i, b in enumerate(self.boosts):
            parse_rule(b.rule, field=f"boosts[{i}].rule")
        for i, p in enumerate(self.promotions):
            parse_rule(p.rule, field=f"promotions[{i}].rule")
        for kind, names in (("boost", [b.name for b in self.boosts]), ("promotion", [p.name for p in self.promotions])):
            dup = sorted({x for x in names if names.count(x) > 1})
            if dup:
                raise ValueError(f"{kind} names must be unique, repeated: {dup}")
        return self


class MerchandisingSettings(_Section):
    blocklist: list[str] = Field(default_factory=list, description="item ids no placement ever serves")
    complementary_event_types: list[str] = Field(
        default_factory=lambda: ["purchase", "add_to_cart"], description="events that put an item in a basket"
    )
    complementary_min_support: int = Field(2, ge=1, description="baskets two items must share to be paired")
    complementary_top_k: int = Field(100, ge=1, le=10_000, description="complements kept per item")


class RankingSettings(_Section):
    """The ranking stage (docs/ranking.md): candidate sources, point-in-time features, LambdaRank."""

    enabled: bool = Field(True, description="train a ranker after the candidate models and serve it when it passes the gate")
    cf_candidates: int = Field(100, ge=1, le=5000, description="candidates from the production CF model")
    cooc_candidates: int = Field(50, ge=0, le=5000, description="co-occurrence neighbours of the user's recent items")
    segment_candidates: int = Field(50, ge=0, le=5000, description="popular in the user's segments")
    content_candidates: int = Field(50, ge=0, le=5000, description="content (TF-IDF) neighbours of recent items")
    context_candidates: int = Field(30, ge=0, le=5000, description="popular items of categories that sell more in the request's weather")
    recent_items: int = Field(10, ge=1, le=1000, description="recent items that seed co-occurrence and content")
    segment_keys: list[str] = Field(default_factory=lambda: ["location", "age_band"], description="user attributes of segments")
    window_days: float = Field(14.0, gt=0, description="days of queries the ranker learns from, before the test part")
    learning_windows: int = Field(4, ge=1, le=52, description="learning windows of window_days each, stacked back from the test part (each with its own CF refit and features as of its start)")
    max_queries: int = Field(4000, ge=10, description="(user, day) queries sampled per window")
    min_queries: int = Field(1000, ge=1, description="skip the ranker with fewer (user, day) queries than this in a window")
    trees: int = Field(150, ge=1, le=5000, description="LightGBM boosting rounds")
    negatives: int = Field(40, ge=1, description="non-relevant candidates sampled per learning query")
    compile: bool = Field(True, description="compile the ranker to machine code for serving when lleaves is installed (the fast-ranker extra)")
    new_item_slots: int = Field(2, ge=0, le=100, description="places in a list for items imported after training, by their text")
    new_item_position: int = Field(3, ge=0, description="the first of those places (0 = the top)")
    new_item_min_similarity: float = Field(0.3, ge=0, le=1, description="TF-IDF cosine a new item needs to the list's subject or seeds")



class AlertRule(_Section):
    """One ``[[alerts]]`` rule: a figure (scalerec.monitoring.figures) compared with a threshold for a duration."""

    name: str = Field(..., min_length=1, description="the alert's name (unique)")
    metric: str = Field(..., description="the figure or check it watches, e.g. p99_latency_ms, drift_score")
    op: Literal[">", ">=", "<", "<="] = Field(">", description="firing when FIGURE op THRESHOLD")
    threshold: float
    for_seconds: float = Field(0.0, ge=0, description="the condition must hold this long before it fires")
    severity: Literal["info", "warning", "critical"] = "warning"
    description: str = ""


class MonitoringSettings(_Section):
    """Metrics history, alert evaluation and delivery, drift windows and capacity budgets."""

    enabled: bool = Field(True, description="sample figures, evaluate [[alerts]] and deliver notices in `serve`")
    sample_interval_seconds: float = Field(60.0, ge=1, description="how often the server records its figures")
    history_days: float = Field(31.0, gt=0, description="figures older than this are deleted")
    window_seconds: float = Field(300.0, ge=10, description="rates and latency quantiles are over this window")
    latency_objective_ms: float = Field(50.0, gt=0, description="p99 latency objective of recommendation endpoints")
    webhooks: list[str] = Field(default_factory=list, description="URLs that receive firing/resolved notices (JSON POST)")
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    baseline_days: int = Field(28, ge=2, description="drift: days before the checked day that form the baseline")
    drift_min_events: int = Field(200, ge=1, description="drift: a day with fewer events is not judged")
    kpi_min_impressions: int = Field(500, ge=1, description="KPI drop: a day of the production version with fewer impressions is not judged")
    memory_budget_mb: float | None = Field(None, gt=0, description="capacity: memory one machine may use; none = the process's cgroup limit or RAM less a 10% reserve (at least 1 GiB)")
    disk_budget_mb: float | None = Field(None, gt=0, description="capacity: disk the data directory may use; none = free + used")
    ann_recall_sample: int = Field(200, ge=10, description="users sampled per model to measure ANN recall against exact")
    use_default_alerts: bool = Field(True, description="add the built-in rules to those in [[alerts]] (same name: yours wins)")

class Settings(BaseSettings):
    """All settings, one section per concern. See scalerec.example.toml for every key."""

    model_config = SettingsConfigDict(
        env_prefix="SCALEREC_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data: DataSettings = Field(default_factory=DataSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    matrix: MatrixSettings = Field(default_factory=MatrixSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    merchandising: MerchandisingSettings = Field(default_factory=MerchandisingSettings)
    placements: list[PlacementSettings] = Field(default_factory=list, description="[[placements]] (docs/merchandising.md)")
    ranking: RankingSettings = Field(default_factory=RankingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    alerts: list[AlertRule] = Field(default_factory=list, description="[[alerts]] rules (see docs/monitoring.md)")

    _toml_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _CURRENT_TOML.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        return self

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir)

    def event_weights(self) -> dict[str, EventType]:
        return dict(self.events.types)


_CURRENT_TOML: dict[str, Path | None] = {"path": None}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where ``loc`` (the path of an unknown key) sits: a section's fields."""
    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = model.model_fields[part].annotation
        elif typing.get_origin(model) is dict:  # events.types.<name>: the value type
            model = typing.get_args(model)[1]
        else:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err.get("loc", ()))
    value = err.get("input")
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        loc = tuple(err.get("loc", ()))
        known = _known_keys(loc)
        if known:
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            where = f"[{'.'.join(map(str, loc[:-1]))}]" if len(loc) > 1 else "the top level"
            return f"unknown setting '{key}': {hint}known keys in {where}: {', '.join(known)}"
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"setting '{key}' = {shown}: {msg}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the Settings: keyword overrides > SCALEREC_* environment > TOML file > defaults.

    The TOML file is ``config_file``, else ``$SCALEREC_CONFIG``, else ``./scalerec.toml`` if present.
    Raises ConfigError naming the key, the value and what is allowed.
    """
    path: Path | None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing scalerec.toml")
    elif os.environ.get(CONFIG_FILE_ENV):
        path = Path(os.environ[CONFIG_FILE_ENV])
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV}={str(path)!r} does not exist; point it at a scalerec.toml")
    else:
        path = Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None
    _CURRENT_TOML["path"] = path
    try:
        settings = Settings(**overrides)
    except PydanticValidationError as exc:
        errs = exc.errors()
        lines = "; ".join(_describe(e) for e in errs[:5])
        where = f" (from {path})" if path else ""
        raise ConfigError(f"invalid configuration{where}: {lines}", details=[_describe(e) for e in errs]) from None
    except Exception as exc:  # a TOML syntax error
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    finally:
        _CURRENT_TOML["path"] = None
    settings._toml_file = path
    return settings


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data (paths as strings), for `scalerec config show`."""
    return settings.model_dump(mode="json")
