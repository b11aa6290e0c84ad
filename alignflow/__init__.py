"""alignflow: synthetic SFT and preference data, as Prefect flows with data-quality gates."""

__version__ = "0.1.0"
