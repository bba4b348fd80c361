"""The ML tests (features, datasets, splits, models, training, tuning, tracking, backtest).
Shared builders are in quantgod_assets_tests/builders.py."""
