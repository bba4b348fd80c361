"""The registered model: an MLflow pyfunc that takes raw preprocessed-book rows.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/quantgod_BTCUSDT_linear@champion")
    probabilities = model.predict(book_frame)   # pandas (or polars) rows of one or more consecutive days
    # a model trained on several instruments: the rows carry an `instrument` column (`ETHUSDT_linear`)

It wraps the one-file bundle (weights, features, scaler, labels) and `predict.predict`, so the
caller needs this package installed and nothing else: no feature code, no scaler, no window
gathering by hand. The output is `predict`'s table (one row per minute: p_sell, p_neutral, p_buy,
predicted, predicted_label, has_window) as a pandas frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd  # imported for real: MLflow reads the hint below when the class is defined
from mlflow.pyfunc import PythonModel

__all__ = ["BookModel", "log_book_model"]


class BookModel(PythonModel):
    """A saved bundle behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        from .predict import Predictor

        self.predictor = Predictor.load(context.artifacts["bundle"])

    # `pd.DataFrame` (a polars frame works too): a hint MLflow infers no schema from, so neither
    # does it check 800+ book columns (`predict` names a missing one) nor ask for hints it can read
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        import polars as pl

        from .predict import predict

        frame = model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(model_input)
        return predict(self.predictor, frame.sort("ts"), instrument=_instrument(frame)).to_pandas()


def _instrument(frame: Any) -> str | None:
    """The rows' `instrument` column (`ETHUSDT_linear`), when given: a model trained on several
    instruments scales each with its own statistics and must be told which one the rows are."""
    if "instrument" not in frame.columns:
        return None
    names = frame.get_column("instrument").unique().to_list()
    if len(names) != 1:
        raise ValueError(f"the rows hold {len(names)} instruments ({', '.join(map(str, names))}): give one at a time")
    return str(names[0])


def log_book_model(bundle: str | Path, name: str, registered_model_name: str | None) -> Any:
    """Logs (and registers) the pyfunc over `bundle` in the active run; returns MLflow's ModelInfo."""
    import importlib.metadata

    import polars
    import torch

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"polars=={polars.__version__}",
                    f"quantgod=={importlib.metadata.version('quantgod')}"]
    import mlflow.pyfunc

    return mlflow.pyfunc.log_model(name=name, python_model=BookModel(), artifacts={"bundle": str(bundle)},
                                   registered_model_name=registered_model_name, pip_requirements=requirements)
