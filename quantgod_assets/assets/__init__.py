"""The thin Dagster layer: one module per stage (`book.py`, `labels.py`, `ml.py`) and `reporting.py`,
which records a daily stage's outcomes (the plain per-day work lives in `quantgod_assets.daily`).

Kept free of imports on purpose: `definitions.py` imports the asset modules.
"""
