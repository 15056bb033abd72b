"""Offline evaluation: splitters, top-k metrics, model comparison and reports."""
