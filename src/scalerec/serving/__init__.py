"""Serving: RecommendService (no web imports), retrieval index, filters, real-time fold-in, auth."""
