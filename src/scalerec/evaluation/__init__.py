"""Offline evaluation: splitters, top-k metrics, model comparison and reports."""

from scalerec.evaluation.evaluate import ALL_METRICS, ComparisonResult, ModelResult, compare, evaluate
from scalerec.evaluation.metrics import (
    coverage,
    hit_rate_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    popularity_bias,
    precision_at_k,
    recall_at_k,
)
from scalerec.evaluation.report import render_html_report, write_html_report
from scalerec.evaluation.splits import (
    SPLITS,
    Split,
    SplitEntry,
    make_split,
    register_split,
    split_entry,
    split_leave_last,
    split_names,
    split_random,
    split_temporal,
    split_users,
)

__all__ = [
    "ALL_METRICS",
    "ComparisonResult",
    "ModelResult",
    "SPLITS",
    "Split",
    "SplitEntry",
    "compare",
    "coverage",
    "evaluate",
    "hit_rate_at_k",
    "make_split",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "popularity_bias",
    "precision_at_k",
    "recall_at_k",
    "register_split",
    "render_html_report",
    "split_entry",
    "split_leave_last",
    "split_names",
    "split_random",
    "split_temporal",
    "split_users",
    "write_html_report",
]
