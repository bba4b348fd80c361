"""Pure ML code: dataset, features, splits, baselines, metrics. No dagster; torch imported late."""
