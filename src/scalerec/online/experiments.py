"""Online experiments: named splits of users (or sessions) between model versions.

An experiment has two or more variants, each a model version ("production" = whatever is in
production when a request comes) and a weight, an optional placement (only requests for that
placement take part), an optional start and end, and a seed. A unit (user id, or session id for
anonymous visitors) is assigned by a seeded hash: ``blake2b(seed:name:unit)`` read as a number in
[0, 1) against the cumulative weights, so every request, worker and process assigns it the same
variant with no shared state. Definitions live in the catalogue (``ExperimentTable``).
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from scalerec.data.coerce import utc_us
from scalerec.errors import ConflictError, NotFoundError, ValidationError

__all__ = ["Experiment", "Variant", "assign", "create", "get", "list_experiments", "parse_variant", "stop"]

PRODUCTION = "production"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCALE = float(1 << 64)


@dataclass(frozen=True)
class Variant:
    name: str
    version: str  # a registered version, or "production"
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    placement: str | None = None
    seed: int = 0
    start: str | None = None  # ISO UTC; None: from creation
    end: str | None = None  # ISO UTC; None: until stopped
    status: str = "running"  # running | stopped
    created_at: str = ""
    stopped_at: str | None = None
    winner: str | None = None  # the variant promoted by promote-winner
    method: str = "split"  # split: each unit sees one variant | interleave: team-draft of two variants per list
    _cum: tuple[float, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        total = sum(v.weight for v in self.variants) or 1.0
        acc, cum = 0.0, []
        for v in self.variants:
            acc += v.weight / total
            cum.append(acc)
        object.__setattr__(self, "_cum", tuple(cum))

    @property
    def control(self) -> Variant:
        """The first variant: the one the others are compared with."""
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise NotFoundError(f"experiment {self.name!r} has no variant {name!r}; its variants: "
                            f"{', '.join(v.name for v in self.variants)}")

    def active(self, now_us: int) -> bool:
        """Running, and ``now`` inside [start, end)."""
        if self.status != "running":
            return False
        if self.start and now_us < utc_us(self.start, "start"):
            return False
        return not (self.end and now_us >= utc_us(self.end, "end"))

    def assign(self, unit: str) -> Variant:
        """The unit's variant (seeded hash; the same in every process)."""
        return self.variants[min(bisect_right(self._cum, _bucket(self.seed, self.name, unit)), len(self.variants) - 1)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_cum")
        d["variants"] = [asdict(v) for v in self.variants]
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Experiment":
        spec = dict(row["spec"])
        variants = tuple(Variant(str(v["name"]), str(v["version"]), float(v["weight"])) for v in spec.pop("variants"))
        spec.pop("name", None)
        spec.pop("status", None)
        spec.pop("created_at", None)
        return cls(name=row["name"], variants=variants, status=row["status"], created_at=row["created_at"], **spec)


def _bucket(seed: int, name: str, unit: str) -> float:
    h = hashlib.blake2b(f"{seed}:{name}:{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / _SCALE


def assign(experiment: Experiment, unit: str) -> Variant:
    return experiment.assign(unit)


def parse_variant(text: str) -> Variant:
    """``NAME=VERSION:WEIGHT`` (``control=production:50``) -> Variant; ValidationError naming the fix."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*([^:\s]+)\s*:\s*([0-9]*\.?[0-9]+)\s*", str(text))
    if m is None:
        raise ValidationError(
            f"variant {text!r} is not NAME=VERSION:WEIGHT; e.g. --variant control=production:50 --variant new=v0003:50",
            details={"variant": text},
        )
    return Variant(m.group(1), m.group(2), float(m.group(3)))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _iso(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    us = utc_us(value, what)
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="seconds")


def validate(
    name: str, variants: list[Variant], *, placement: str | None, start: Any, end: Any, seed: int,
    versions: set[str], method: str = "split",
) -> Experiment:
    """The one validation path of a new experiment (CLI and HTTP)."""
    if method not in ("split", "interleave"):
        raise ValidationError(f"method must be 'split' or 'interleave', got {method!r}", details={"method": method})
    if method == "interleave" and len(variants) != 2:
        raise ValidationError(f"interleaving compares exactly two variants, got {len(variants)}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(f"experiment name {name!r} must be 1-64 letters, digits, '.', '_' or '-'", details={"name": name})
    if len(variants) < 2:
        raise ValidationError("an experiment needs at least two variants, e.g. control=production:50 new=VERSION:50")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValidationError(f"variant names repeat: {names}; give each variant its own name")
    for v in variants:
        if not (0 < v.weight <= 1e6):
            raise ValidationError(f"variant {v.name!r} has weight {v.weight}; weights must be > 0 and at most 1e6")
        if v.version != PRODUCTION and v.version not in versions:
            raise NotFoundError(f"variant {v.name!r} names version {v.version!r}, which is not registered; "
                                "see `scalerec models list`", details={"version": v.version})
    if len({v.version for v in variants}) != len(variants):
        raise ValidationError("two variants serve the same version; each variant must serve a different one")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValidationError(f"seed must be an integer, got {seed!r}")
    s, e = _iso(start, "start"), _iso(end, "end")
    if s and e and utc_us(e, "end") <= utc_us(s, "start"):
        raise ValidationError(f"end {e} is not after start {s}")
    if placement is not None and (not isinstance(placement, str) or not placement.strip()):
        raise ValidationError("placement must be a non-empty string, or left out for every placement")
    now = _now_iso()
    return Experiment(name=name, variants=tuple(variants), placement=placement, seed=seed,
                      start=s or now, end=e, created_at=now, method=method)


# ---------------------------------------------------------------------- storage (the catalogue)
def _row(exp: Experiment) -> dict[str, Any]:
    spec = exp.to_dict()
    for k in ("name", "status", "created_at"):
        spec.pop(k)
    return {"name": exp.name, "status": exp.status, "spec": spec, "created_at": exp.created_at, "updated_at": _now_iso()}


def create(catalog: Any, exp: Experiment) -> Experiment:
    """Store a validated experiment; ConflictError when the name is taken or a running experiment
    already splits the same placement (a user would be in two at once)."""
    for other in list_experiments(catalog, status="running"):
        if other.placement == exp.placement:
            where = f"placement {exp.placement!r}" if exp.placement else "every placement"
            raise ConflictError(f"experiment {other.name!r} is already running on {where}; stop it first "
                                f"(`scalerec experiments stop {other.name}`) or give this one another --placement")
    if not catalog.insert_experiment(_row(exp)):
        raise ConflictError(f"an experiment named {exp.name!r} exists; choose another name")
    return exp


def get(catalog: Any, name: str) -> Experiment:
    row = catalog.experiment_row(name)
    if row is None:
        raise NotFoundError(f"no experiment named {name!r}; see `scalerec experiments list`", details={"name": name})
    return Experiment.from_row(row)


def list_experiments(catalog: Any, status: str | None = None) -> list[Experiment]:
    return [Experiment.from_row(r) for r in catalog.experiment_rows(status)]


def running_versions(catalog: Any) -> set[str]:
    """The registered versions that running experiments serve (retention and deletion keep them)."""
    return {v.version for e in list_experiments(catalog, "running") for v in e.variants if v.version != PRODUCTION}


def save(catalog: Any, exp: Experiment) -> Experiment:
    row = _row(exp)
    if not catalog.update_experiment(exp.name, exp.status, row["spec"], row["updated_at"]):
        raise NotFoundError(f"no experiment named {exp.name!r}")
    return exp


def stop(catalog: Any, name: str) -> Experiment:
    """Stop an experiment: from the next poll every unit gets production again (idempotent)."""
    exp = get(catalog, name)
    if exp.status == "stopped":
        return exp
    return save(catalog, replace(exp, status="stopped", stopped_at=_now_iso()))
