"""Helpers shared by `scalerec evaluate` and `scalerec train`: the split flags and the protocol lines."""

from __future__ import annotations

from typing import Any

from scalerec.cli._app import console
from scalerec.errors import ValidationError


def parse_ratios(text: str | None) -> tuple[float, ...] | None:
    """"0.8,0.2" -> (0.8, 0.2); None stays None."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValidationError(f"--ratios must be like 0.8,0.2 or 0.8,0.1,0.1; got {text!r}") from None


def print_protocol(protocol: dict[str, Any] | None) -> None:
    """The protocol record's lines (what was held out and why), warnings in yellow."""
    if not protocol:
        return
    from scalerec.evaluation.protocol import ProtocolRecord

    for line in ProtocolRecord.from_dict(protocol).lines():
        console.print(line, style="yellow" if line.lstrip().startswith("warning") else None, markup=False,
                      highlight=False, soft_wrap=True)
