"""The ML stages as plain functions over the typed settings, without Dagster:

    data.py     labelled range → features, windows, purged split, scaler (`prepare_data`)
    search.py   the Optuna study → best_params.json (`run_optimization`; trials in tune.py)
    final.py    the final model, test split vs baselines, backtest (`train_final_model`)
    reports.py  Markdown tables of their results
    tracking.py MLflow (study runs, the final run, the registry alias)
    lines.py    where their log lines go (`lines_to`)
    predict.py  a saved model's per-minute probabilities on preprocessed days (`predict`)

Below them: dataset, features, splits, models, train, device, baselines, backtest, metrics.
Importing this package loads neither torch, optuna, mlflow nor dagster.
"""

# `predict` names the function, not its module: bound here, after the submodule's import set the
# attribute to the module. predict.py imports torch only when a model is loaded.
from .predict import predict

__all__ = ["predict"]
