"""Prefect flows: one per stage, and `pipeline` wiring them end to end."""
