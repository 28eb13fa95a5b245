"""The registered model: one MLflow pyfunc bundling the three LightGBM models and the feature specification.

`predict` takes rows of `features.pipeline.build_features` and returns p_purchase, p_second_purchase,
expected_value and reasons, one row per input row. Serving and the batch unwrap the python model and call
the bundled `KairosModel` directly (no per-call schema enforcement), so both paths share one predict.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import joblib
import mlflow
import pandas as pd

from training.models import KairosModel
from training.registry import MODEL_NAME

__all__ = ["KairosPyfunc", "load_kairos_model", "log_kairos_model"]


class KairosPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper of a fitted KairosModel (stored as a joblib artifact)."""

    def load_context(self, context) -> None:
        self.model: KairosModel = joblib.load(context.artifacts["kairos"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        scores = self.model.predict(model_input)
        scores["reasons"] = self.model.reasons(model_input)
        return scores.reset_index(drop=True)


def log_kairos_model(model: KairosModel, example: pd.DataFrame, register: bool = True):
    """Log `model` to the active run as `model`, registered as `kairos` with signature and input example."""
    from mlflow.models import infer_signature

    example = example.head(5).reset_index(drop=True)
    wrapper = KairosPyfunc()
    wrapper.model = model
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kairos.joblib"
        joblib.dump(model, path)
        signature = infer_signature(example, wrapper.predict(None, example))
        return mlflow.pyfunc.log_model(
            name="model", python_model=KairosPyfunc(), artifacts={"kairos": str(path)},
            signature=signature, input_example=example,
            registered_model_name=MODEL_NAME if register else None,
        )


def load_kairos_model(model_uri: str) -> KairosModel:
    """Load the bundled KairosModel behind a pyfunc URI (e.g. models:/kairos@champion)."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
