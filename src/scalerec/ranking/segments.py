"""Customer groups: any user attribute plus derived ones (activity, new_vs_returning).

:func:`user_segments` labels users (training rows) from the catalogue's attributes and their
history; :func:`segment_metrics` reports every per-user metric per group with intervals
(evaluation/stats.py), as ``scalerec evaluate --segments`` and the training manifest show them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from scalerec.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.ranking.ranker import AsOf, Queries, World

#: derived segments (not user attributes)
DERIVED = ("activity", "new_vs_returning")
#: activity bands by events in the user's history (light < 3 <= regular < 20 <= heavy)
ACTIVITY_BANDS = (3, 20)


def activity_band(counts: np.ndarray) -> np.ndarray:
    names = np.array(["light", "regular", "heavy"])
    return names[np.searchsorted(np.asarray(ACTIVITY_BANDS), np.asarray(counts), side="right")]


def attribute_labels(users: pa.Table, user_ids: np.ndarray, key: str) -> np.ndarray:
    """str label per user of ``user_ids``: the attribute ``key`` ("unknown" when absent)."""
    df = pl.from_arrow(users.select(["user_id", "attributes"]))
    assert isinstance(df, pl.DataFrame)
    from scalerec.ranking.features import map_get

    df = df.with_columns(map_get(df, "attributes", key).alias("v"))
    base = pl.DataFrame({"user_id": np.asarray(user_ids).astype(str)}).join(df.select("user_id", "v"), on="user_id",
                                                                             how="left", maintain_order="left")
    return base["v"].fill_null("unknown").to_numpy().astype(str)


def user_segments(keys: list[str], users: pa.Table, user_ids: np.ndarray, history_counts: np.ndarray,
                  holdout_users: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """key -> str label per user. ``history_counts``: events per user in the training part;
    ``activity`` bands them, ``new_vs_returning`` is "new" for users with none there."""
    if not keys:
        raise ValidationError("--segments needs at least one key, e.g. --segments country,age_band,activity")
    present = set()
    for row in users.column("attributes").to_pylist() if users.num_rows else []:
        present.update(k for k, _ in (row or []))
    out: dict[str, np.ndarray] = {}
    for key in keys:
        if key == "activity":
            out[key] = activity_band(history_counts)
        elif key == "new_vs_returning":
            out[key] = np.where(np.asarray(history_counts) > 0, "returning", "new")
        elif key in present:
            out[key] = attribute_labels(users, user_ids, key)
        else:
            raise ValidationError(
                f"unknown segment {key!r}: no user has that attribute; choose from "
                f"{', '.join(sorted(present | set(DERIVED)))}",
                details={"segment": key},
            )
    return out


def segment_metrics(per_user: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, confidence: float,
                    n_boot: int, seed: int, min_users: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
    """segment key -> value -> metric -> {mean, low, high, n_users} (groups under ``min_users`` kept, flagged)."""
    from scalerec.evaluation.stats import bootstrap_intervals

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, lab in labels.items():
        groups: dict[str, dict[str, Any]] = {}
        for value in sorted(set(lab.tolist())):
            m = lab == value
            ivs = bootstrap_intervals({k: v[m] for k, v in per_user.items()}, confidence=confidence, n_boot=n_boot, seed=seed)
            groups[value] = {k: {"mean": iv.mean, "low": iv.low, "high": iv.high, "n_users": iv.n_users} for k, iv in ivs.items()}
            groups[value]["_n_users"] = int(m.sum())
            groups[value]["_enough"] = bool(m.sum() >= min_users)
        out[key] = groups
    return out


def query_segments(world: "World", d: "AsOf", qs: "Queries") -> dict[str, np.ndarray]:
    """Labels of the ranker's test queries: each segment key's attribute value, activity, new_vs_returning."""
    out: dict[str, np.ndarray] = {}
    for j, key in enumerate(world.segment_keys):
        vocab = np.array(["unknown", *world.attr_vocabs[j].values])
        out[key] = vocab[world.user_attrs[qs.users, j]]
    hist = np.asarray(d.seen[qs.users].sum(axis=1)).ravel()
    out["activity"] = activity_band(hist)
    out["new_vs_returning"] = np.where(hist > 0, "returning", "new")
    return out


def evaluate_segments(models: dict[str, Any], split: Any, users: pa.Table, keys: list[str], ks: tuple[int, ...],
                      metrics: tuple[str, ...] | list[str], *, confidence: float, n_boot: int, seed: int,
                      min_users: int = 1) -> dict[str, Any]:
    """Every fitted model's per-user metrics on ``split``'s test part, per segment of ``keys``:
    {model: {key: {value: {metric: interval}}}} (what ``scalerec evaluate --segments`` reports)."""
    from scalerec.evaluation.evaluate import evaluate_per_user

    if getattr(split, "strong_generalisation", False):
        raise ValidationError("--segments needs the test users in the training matrix; use a split other than 'users'")
    out: dict[str, Any] = {}
    history = np.diff(split.train.matrix.indptr)
    for name, model in models.items():
        ev = evaluate_per_user(model, split, k=ks, metrics=metrics, catalogue_detail=False)
        rows = np.asarray(ev.users, np.int64)
        labels = user_segments(keys, users, np.asarray(split.train.user_ids)[rows], history[rows])
        out[name] = segment_metrics(ev.per_user, labels, confidence=confidence, n_boot=n_boot, seed=seed,
                                    min_users=min_users)
    return out


def segments_html(segments: dict[str, Any]) -> str:
    """An HTML section of the per-segment figures (appended to the evaluation report)."""
    from html import escape

    parts = ["<section><h2>Per segment</h2><p>Mean per user [interval]; groups under the gate's minimum of users in grey.</p>"]
    for model, by_key in segments.items():
        for key, groups in by_key.items():
            metrics = sorted({m for g in groups.values() for m in g if not m.startswith("_")})
            parts.append(f"<h3>{escape(model)} by {escape(key)}</h3><table><tr><th>{escape(key)}</th><th>users</th>"
                         + "".join(f"<th>{escape(m)}</th>" for m in metrics) + "</tr>")
            for value, g in groups.items():
                style = "" if g["_enough"] else ' style="color:#999"'
                cells = "".join(f"<td>{g[m]['mean']:.4f} [{g[m]['low']:.4f}, {g[m]['high']:.4f}]</td>" for m in metrics)
                parts.append(f"<tr{style}><td>{escape(value)}</td><td>{g['_n_users']}</td>{cells}</tr>")
            parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)
