"""Prefect tasks: thin wrappers that run one domain batch function each, one task run per batch."""
