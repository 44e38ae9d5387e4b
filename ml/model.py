"""The champion as MLflow sees it: a pyfunc model that takes raw rows and returns default probabilities.

The booster file travels as the model's artifact; its feature spec and vocabulary travel inside it, so the
same ``models:/<name>@champion`` serves batch scoring, the monitor and a live endpoint with no extra files.
Loading it needs the ``loopline`` package installed (it is, in every Loopline image and virtualenv).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import xgboost as xgb

from ml.train import predict

BOOSTER_ARTIFACT = "booster"


class LooplineModel(mlflow.pyfunc.PythonModel):
    """Raw rows in, probability of the positive class out."""

    booster: xgb.Booster

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.booster = xgb.Booster()
        self.booster.load_model(context.artifacts[BOOSTER_ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        return predict(self.booster, model_input)
