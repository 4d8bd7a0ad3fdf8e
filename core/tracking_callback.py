"""The Keras callback that streams each epoch's metrics to an MLflow run while a model trains.

A thin wrapper: `core.tracking.RunTracker.callbacks` opens the MLflow run and makes this callback; the
metrics keep history.csv's names (loss, accuracy, val_loss, val_accuracy, learning_rate) and its epoch
numbers (step = epoch, from 1, counted on through a fine-tuning phase). A failure to log never stops
training: the callback reports it once (``on_error``) and logs nothing more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import numpy as np


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics to the MLflow run ``mlflow_run_id`` through ``client``.

    Args:
        client: an ``mlflow.MlflowClient`` for the tracking store.
        mlflow_run_id: the MLflow run to log to (already created).
        on_error: called once with the exception when logging fails; the callback then stops logging.
    """

    def __init__(self, client, mlflow_run_id: str, on_error: Callable[[Exception], None] | None = None):
        super().__init__()
        self.client, self.mlflow_run_id, self.on_error = client, mlflow_run_id, on_error
        self.failed = False

    def on_epoch_end(self, epoch, logs=None):
        if self.failed:
            return
        from mlflow.entities import Metric

        logs = dict(logs or {})
        # ReduceLROnPlateau writes the rate into logs before it lowers it: the value history.csv records.
        rate = logs.pop("learning_rate", None)
        if rate is None and self.model is not None and getattr(self.model, "optimizer", None) is not None:
            rate = float(np.asarray(self.model.optimizer.learning_rate))
        if rate is not None:
            logs["learning_rate"] = rate
        now = int(time.time() * 1000)
        metrics = []
        for name, value in logs.items():
            try:
                number = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                metrics.append(Metric(key=name, value=number, timestamp=now, step=epoch + 1))
        try:
            self.client.log_batch(self.mlflow_run_id, metrics=metrics)
        except Exception as exc:  # tracking must never end a training run
            self.failed = True
            if self.on_error is not None:
                self.on_error(exc)
            return
