"""The validation protocol record: which hold-out a run used, its parts' sizes and the rule that chose it.

Plain data (stdlib only) so the manifest, the CLI and the HTML report read it without the splitters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["PartRecord", "ProtocolRecord"]


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` accepted; naive means UTC) as an aware datetime; None if not one."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


_time = parse_time


@dataclass
class PartRecord:
    """One held-out part (test or validation): its window (temporal rules), events and evaluated users."""

    users: int
    #: relevant (user, item) cells of the evaluated users
    interactions: int
    #: events in the held-out part / all usable events of what was split
    events: int
    train_events: int
    start: datetime | None = None
    end: datetime | None = None

    @property
    def share(self) -> float:
        total = self.events + self.train_events
        return self.events / total if total else 0.0

    @classmethod
    def of(cls, split: Any) -> "PartRecord":
        """The test part of a Split (``scalerec.evaluation.splits.Split``)."""
        info = split.info or {}
        users = split.test_users
        return cls(
            users=int(len(users)),
            interactions=int(split.test[users].nnz) if len(users) else 0,
            events=int(info.get("test_events", 0)),
            train_events=int(info.get("train_events", 0)),
            start=_time(info.get("test_start")),
            end=_time(info.get("test_end")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "days": round((self.end - self.start).total_seconds() / 86400, 3) if self.start and self.end else None,
            "events": self.events,
            "train_events": self.train_events,
            "share": round(self.share, 4),
            "users": self.users,
            "interactions": self.interactions,
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "PartRecord":
        return cls(
            users=int(body.get("users", 0)),
            interactions=int(body.get("interactions", 0)),
            events=int(body.get("events", 0)),
            train_events=int(body.get("train_events", 0)),
            start=_time(body.get("start")),
            end=_time(body.get("end")),
        )

    def describe(self) -> str:
        when = f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC, " if self.start and self.end else ""
        return f"{when}{self.events:,} events ({self.share:.1%}), {self.users:,} users, {self.interactions:,} items to find"


@dataclass
class ProtocolRecord:
    """What a run held out and why: the split asked for, the rule that fired, the test and validation parts.

    ``rule`` is the concrete hold-out ("temporal", "leave-last-share", "random", or a named split);
    ``fold_in`` is True when test users are held out of training entirely (their history is folded in).
    """

    split: str
    rule: str
    reason: str
    test: PartRecord
    validation: PartRecord | None = None
    fold_in: bool = False
    #: the sizing settings and the resolved targets (holdout_share, min_test_users, target_users, ...)
    settings: dict[str, Any] = field(default_factory=dict)
    #: the options the concrete splitter ran with
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "rule": self.rule,
            "reason": self.reason,
            "fold_in": self.fold_in,
            "test": self.test.to_dict(),
            "validation": self.validation.to_dict() if self.validation else None,
            "settings": dict(self.settings),
            "options": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.options.items()},
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "ProtocolRecord":
        valid = body.get("validation")
        return cls(
            split=str(body.get("split", "?")),
            rule=str(body.get("rule", "?")),
            reason=str(body.get("reason", "")),
            test=PartRecord.from_dict(body.get("test") or {}),
            validation=PartRecord.from_dict(valid) if valid else None,
            fold_in=bool(body.get("fold_in", False)),
            settings=dict(body.get("settings") or {}),
            options=dict(body.get("options") or {}),
            warnings=list(body.get("warnings") or []),
        )

    def lines(self) -> list[str]:
        """Human-readable lines for the CLI (train, evaluate)."""
        out = [f"protocol: {self.split} -> {self.rule}" + (" (held-out users, folded in)" if self.fold_in else ""),
               f"  why: {self.reason}", f"  test: {self.test.describe()}"]
        if self.validation is not None:
            out.append(f"  validation: {self.validation.describe()}")
        out.extend(f"  warning: {w}" for w in self.warnings)
        return out
