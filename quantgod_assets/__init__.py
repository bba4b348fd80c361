"""QuantGod: Bybit order-book archives to trained trading models, as a Dagster asset platform."""

__version__ = "0.1.0"
