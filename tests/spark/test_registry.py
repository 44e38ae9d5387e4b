"""A model trained on Spark is registered as Loopline's native XGBoost pyfunc and serves without Spark or Java."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Run in a fresh interpreter where importing pyspark fails and no Java is on the PATH.
LOAD_WITHOUT_SPARK = """
import json, sys
sys.modules["pyspark"] = None
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
frame = pd.read_parquet(sys.argv[3])
print(json.dumps([float(v) for v in model.predict(frame)]))
"""


def test_spark_model_registers_and_predicts_without_spark(
    trained: Any, spark_home: tuple[Any, Any], window: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml import registry, train
    from ml.lake import Lake

    config, paths = spark_home
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lake = Lake(paths.lake)
    ref = registry.log_training_run(
        config,
        paths,
        booster=trained.booster,
        train=trained.example,
        train_rows=trained.train_rows,
        partitions=[lake.partition("loans", b) for b in window.batches],
        params=train.hyperparameters(config.training, window.params),
        train_metrics=trained.train_metrics,
        profile=trained.profile,
        quality=None,
        importance=trained.importance,
        run_name="spark parity",
        tags=trained.lineage,
    )
    import mlflow

    run = mlflow.get_run(ref.run_id)
    assert run.data.tags["loopline.engine"] == "spark"
    requirements = mlflow.artifacts.download_artifacts(f"runs:/{ref.run_id}/model/requirements.txt")
    assert "pyspark" not in Path(requirements).read_text()

    frame = lake.read("loans", [window.shifted]).head(200)
    rows_file = paths.home / "rows.parquet"
    frame.to_parquet(rows_file)
    env = {k: v for k, v in os.environ.items() if k not in {"JAVA_HOME", "SPARK_HOME"}}
    env["PATH"] = os.path.dirname(sys.executable)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITHOUT_SPARK,
            paths.tracking_uri(config),
            f"models:/{config.model_name}/{ref.version}",
            str(rows_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = np.asarray(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_array_equal(scores, train.predict(trained.booster, frame))
