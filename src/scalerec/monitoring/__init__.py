"""Monitoring: Prometheus metrics of every part, the figures history, drift, alert rules, capacity planning and the dashboard's data."""
