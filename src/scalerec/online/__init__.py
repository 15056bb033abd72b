"""Online measurement: impressions attributed to events, KPIs, experiments and their reports."""
