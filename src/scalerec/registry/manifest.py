"""The typed manifest of a model version: what was trained, on which data and matrix, how well, and the gate's decision."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scalerec.data.matrix import MatrixSpec
from scalerec.errors import StorageError
from scalerec.evaluation.protocol import ProtocolRecord, parse_time

__all__ = ["SNAPSHOT_END_KEYS", "Manifest", "parse_time"]

#: Spellings of "the data ends here" accepted in ``data`` (or ``snapshot``), first found wins;
#: training writes ``max_timestamp``, the others come from hand-written or older manifests.
SNAPSHOT_END_KEYS = ("snapshot_at", "end", "max_timestamp", "newest_event", "time_max", "taken_at")
_RANGE_KEYS = ("time_range", "date_range")
#: Top-level key order of manifest.json as training has always written it (others follow).
_ORDER = (
    "format", "version", "created_at", "model", "primary_metric", "data", "split", "protocol", "metrics", "intervals",
    "search",
    "fit_seconds", "peak_rss_bytes", "promotion", "scalerec_version", "python", "trained_at",
)
#: Keys of ``data`` this class owns (the rest of ``data`` is kept as read).
_DATA_KEYS = ("event_count", "min_timestamp", "max_timestamp", "fingerprint", "matrix_settings", "matrix_spec")
_MODEL_KEYS = ("family", "class", "params", "matrix_overrides")


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


MANIFEST = "manifest.json"


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse ``<path>/manifest.json``; StorageError naming the file when that fails."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text())
    except FileNotFoundError:
        raise StorageError(f"model version {Path(path).name}: {MANIFEST} is missing in {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StorageError(f"model version {Path(path).name}: cannot read {MANIFEST}: {exc}") from None
    if not isinstance(data, dict):
        raise StorageError(f"model version {Path(path).name}: {MANIFEST} is not a JSON object")
    return data



@dataclass
class Manifest:
    """``models/<version>/manifest.json`` as an object.

    ``from_dict`` reads every manifest written so far (and the older spellings of the snapshot
    end); ``to_dict`` writes the same JSON keys training always wrote (plus ``data.matrix_spec``).
    Keys this class does not type (``split``, ``search``, counts ...) are kept in ``extra`` /
    ``data_extra`` and written back unchanged.
    """

    family: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model_class: str | None = None
    #: the model's own matrix overrides (already applied in ``matrix``)
    matrix_overrides: dict[str, Any] = field(default_factory=dict)
    #: the matrix the model was fitted on (settings, then its overrides)
    matrix: MatrixSpec = field(default_factory=MatrixSpec)
    #: the ``[matrix]`` settings section as recorded
    matrix_settings: dict[str, Any] | None = None
    snapshot_start: datetime | None = None
    snapshot_end: datetime | None = None
    fingerprint: str | None = None
    event_count: int | None = None
    primary_metric: str | None = None
    #: {part: {"ndcg@20": value, ...}}: "test" (the chosen configuration scored once on data the
    #: search never saw) and "validation" (where the search chose it); older manifests: {split name: ...}
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    #: what was held out and why (None in manifests written before protocols were recorded)
    protocol: ProtocolRecord | None = None
    fit_seconds: float | None = None
    peak_rss_bytes: int | None = None
    #: the promotion gate's decision (gate_decision's dict)
    promotion: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    created_at: str | None = None
    data_extra: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_metrics(self) -> dict[str, float]:
        return dict(self.metrics.get("test") or {})

    @property
    def validation_metrics(self) -> dict[str, float]:
        return dict(self.metrics.get("validation") or {})

    @property
    def score(self) -> float | None:
        """The primary metric's value on the test part (older manifests: the first split that recorded it)."""
        ordered = sorted(self.metrics.values(), key=lambda v: v is not self.metrics.get("test"))
        for values in ordered:
            if isinstance(values, Mapping) and self.primary_metric in values:
                try:
                    return float(values[self.primary_metric])
                except (TypeError, ValueError):
                    return None
        return None

    @property
    def gate_refused(self) -> bool:
        return self.promotion.get("gate_passed") is False

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "Manifest":
        body = copy.deepcopy(dict(body))
        model = body.pop("model", None) or {}
        data_key = "data" if body.get("data") else ("snapshot" if isinstance(body.get("snapshot"), Mapping) else "data")
        data = dict(body.pop(data_key, None) or {})
        spec = MatrixSpec.from_manifest_dict({"data": data, "model": model})
        end = None
        for key in SNAPSHOT_END_KEYS:
            end = end or parse_time(data.get(key))
        for key in _RANGE_KEYS:
            rng = data.get(key)
            if end is None and isinstance(rng, (list, tuple)) and len(rng) == 2:
                end = parse_time(rng[1])
        count = data.get("event_count")
        out = cls(
            family=model.get("family"),
            params=dict(model.get("params") or {}),
            model_class=model.get("class"),
            matrix_overrides=dict(model.get("matrix_overrides") or {}),
            matrix=spec,
            matrix_settings=data.get("matrix_settings"),
            snapshot_start=parse_time(data.get("min_timestamp")),
            snapshot_end=end,
            fingerprint=data.get("fingerprint"),
            event_count=None if count is None else int(count),
            primary_metric=body.pop("primary_metric", None),
            metrics=dict(body.pop("metrics", None) or {}),
            protocol=ProtocolRecord.from_dict(body["protocol"]) if isinstance(body.get("protocol"), Mapping) else None,
            fit_seconds=body.pop("fit_seconds", None),
            peak_rss_bytes=body.pop("peak_rss_bytes", None),
            promotion=dict(body.pop("promotion", None) or {}),
            version=body.pop("version", None),
            created_at=body.pop("created_at", None),
            # A data key that was read under another spelling stays as it was (not rewritten).
            data_extra={k: v for k, v in data.items() if k not in _DATA_KEYS},
            extra={k: v for k, v in body.items() if k != "protocol"},
        )
        if data_key == "snapshot":
            out.extra["_data_key"] = "snapshot"
        model_rest = {k: v for k, v in model.items() if k not in _MODEL_KEYS}
        if model_rest:
            out.extra["_model_extra"] = model_rest
        return out

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        """The manifest of the version directory ``path``; StorageError when unreadable."""
        return cls.from_dict(read_manifest(Path(path)))

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json body (JSON-ready except numpy scalars, which the registry converts)."""
        extra = copy.deepcopy(self.extra)
        data_key = extra.pop("_data_key", "data")
        model: dict[str, Any] = {"family": self.family}
        if self.model_class is not None:
            model["class"] = self.model_class
        model["params"] = dict(self.params)
        model["matrix_overrides"] = dict(self.matrix_overrides)
        model.update(extra.pop("_model_extra", {}))
        data: dict[str, Any] = {}
        if self.event_count is not None:
            data["event_count"] = int(self.event_count)
        if self.snapshot_start is not None or self.snapshot_end is not None:
            data["min_timestamp"] = _iso(self.snapshot_start)
            data["max_timestamp"] = _iso(self.snapshot_end)
        if self.fingerprint is not None:
            data["fingerprint"] = self.fingerprint
        data.update(self.data_extra)
        if self.matrix_settings is not None:
            data["matrix_settings"] = dict(self.matrix_settings)
        data["matrix_spec"] = self.matrix.to_dict()
        body: dict[str, Any] = {**extra, "model": model, data_key: data}
        if self.primary_metric is not None:
            body["primary_metric"] = self.primary_metric
        if self.protocol is not None:
            body["protocol"] = self.protocol.to_dict()
        body["metrics"] = {k: dict(v) for k, v in self.metrics.items()}
        if self.fit_seconds is not None:
            body["fit_seconds"] = self.fit_seconds
        if self.peak_rss_bytes is not None:
            body["peak_rss_bytes"] = int(self.peak_rss_bytes)
        if self.promotion:
            body["promotion"] = dict(self.promotion)
        if self.version is not None:
            body["version"] = self.version
        if self.created_at is not None:
            body["created_at"] = self.created_at
        rank = {k: i for i, k in enumerate(_ORDER)}
        ordered = sorted(body, key=lambda k: (k == "files", rank.get(k, len(rank))))
        return {k: body[k] for k in ordered}
