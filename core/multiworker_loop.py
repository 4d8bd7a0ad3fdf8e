"""The custom training loop of a multi-worker run (see `core.multiworker`): each worker decodes its own share
of the files, a replica step with `tf.GradientTape` and ``tf.nn.compute_average_loss`` over the global batch,
``strategy.reduce`` for the sums, the usual Keras callbacks driven by hand, and a checkpoint per epoch.

Every worker must take the same number of steps (a collective waits for all of them): each epoch takes
``ceil(ceil(n / workers) / batch per worker)`` steps from its share repeated, so a worker whose share
lost a file (deleted, corrupt) still fills its batches; validation pads each share to the same length
with zero-weight images. A stop (cancel file on the chief, NaN loss) travels with the step's sums, so
every worker stops at the same step.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from core import pipeline, runs
from core.distribute import DistributeError

CALLBACK_STATE = ("wait", "best", "cooldown_counter", "stopped_epoch", "best_epoch")


def explain_failure(exc: BaseException, backup) -> BaseException:
    """A lost worker's error as a `DistributeError` that says how to resume; any other error as it is."""
    lost = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError)
    if not isinstance(exc, lost):
        return exc
    state = backup.read_state() or {}
    text = str(exc)
    if "heartbeat" in text or "unhealthy" in text:
        why = "it stopped sending heartbeats"
    elif "Connection reset" in text or "Socket closed" in text or "connect" in text.lower():
        why = "its connection dropped"
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and "execution error" not in line]
        why = (lines[0] if lines else type(exc).__name__)[:160]
    return DistributeError(
        f"A worker of the cluster was lost ({why}). Start every worker again with the same command: training "
        f"resumes after epoch {state.get('epoch', 0)} from the checkpoints in {backup.path}."
    )


class Loop:
    """One worker's share of a multi-worker training run."""

    def __init__(self, placement, model, index, config, class_weights, policy, backup, run, progress, extra_callbacks):
        from core import training

        self.strategy, self.model, self.config, self.backup, self.run = (
            placement.strategy,
            model,
            config,
            backup,
            run,
        )
        self.progress = progress
        self.rank, self.workers = placement.worker_index, placement.workers
        self.replicas = placement.replicas
        self.local_replicas = max(1, self.replicas // self.workers)
        self.global_batch = config.batch_size * self.replicas
        self.per_worker = config.batch_size * self.local_replicas
        self.size = (config.image_size, config.image_size)
        self.num_classes = len(index.class_names)
        weights = [class_weights.get(i, 1.0) for i in range(self.num_classes)] if class_weights else None
        self.class_weights = tf.constant(weights or [1.0] * self.num_classes, tf.float32)
        self.phases = training._phases(config, self.replicas)
        self.resumed_from: list[int] = []
        self._shares(index)
        self._callbacks(index, policy, extra_callbacks)

    # ---- inputs: this worker's share of each split ----------------------------------------------------

    def _shares(self, index) -> None:
        self.shares, self.trackers, self.routes = {}, {}, {}
        for split in ("train", "val"):
            frame = index.split(split)
            self.shares[split] = frame.iloc[self.rank :: self.workers].reset_index(drop=True)
            self.trackers[split] = pipeline.PassTracker(self.shares[split]["path"])
            self.routes[split] = pipeline.plan_routes(list(self.shares[split]["path"]))
        per_share = {s: math.ceil(len(index.split(s)) / self.workers) for s in ("train", "val")}
        self.steps = max(1, math.ceil(per_share["train"] / self.per_worker))
        self.val_steps = math.ceil(per_share["val"] / self.per_worker) if per_share["val"] else 0
        self.train_data = self.strategy.distribute_datasets_from_function(self._train_dataset)
        self.val_data = self.strategy.distribute_datasets_from_function(self._val_dataset) if self.val_steps else None

    def _train_dataset(self, context):
        share = self.shares["train"]
        dataset = pipeline.training_dataset(
            list(share["path"]),
            share["label"],
            self.size,
            context.get_per_replica_batch_size(self.global_batch),
            routes=self.routes["train"],
            tracker=self.trackers["train"],
            shuffle=True,
            augment=self.config.augment,
            seed=self.config.seed + self.rank,
            repeat=True,
            drop_remainder=True,
        )
        return dataset.take(self.steps * self.local_replicas)  # the first pass of the share is always complete

    def _val_dataset(self, context):
        share = self.shares["val"]
        tracker = self.trackers["val"]
        decoded = pipeline.decoded_dataset(list(share["path"]), share["label"], self.size, self.routes["val"], tracker)

        def weighted(image, label, index):
            seen = tf.numpy_function(tracker.seen, [tf.reshape(index, [1])], tf.int64)
            with tf.control_dependencies([seen]):
                return tf.cast(image, tf.float32), label, tf.constant(1.0)

        padding = tf.data.Dataset.from_tensors(
            (tf.zeros((*self.size, 3), tf.float32), tf.constant(0, tf.int32), tf.constant(0.0))
        ).repeat()
        total = self.val_steps * self.per_worker
        dataset = decoded.map(weighted).concatenate(padding).take(total)
        return dataset.batch(context.get_per_replica_batch_size(self.global_batch)).prefetch(2)

    # ---- callbacks ------------------------------------------------------------------------------------

    def _callbacks(self, index, policy, extra_callbacks) -> None:
        from core import training

        total = self.config.epochs + self.config.fine_tune_epochs
        shared = [keras.callbacks.TerminateOnNaN()]
        if self.val_steps:
            shared += [
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.config.early_stopping_patience),
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6),
            ]
        self.recorder = None
        chief_only = []
        if self.run is not None:
            self.recorder = training.RunRecorder(self.run, total, self.steps, self.progress)
            chief_only.append(self.recorder)
            if self.val_steps:
                chief_only.append(
                    keras.callbacks.ModelCheckpoint(
                        self.backup.best_weights, monitor="val_loss", save_best_only=True, save_weights_only=True
                    )
                )
            chief_only.append(training.drift_callback(self.run, self.model, index, self.size, self.config, policy))
            chief_only += list(extra_callbacks)
        self.callback_objects = shared + chief_only
        self.callbacks = keras.callbacks.CallbackList(self.callback_objects, model=self.model)

    # ---- steps ----------------------------------------------------------------------------------------

    def _train_step(self):
        model, strategy, class_weights = self.model, self.strategy, self.class_weights
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        global_batch = self.global_batch

        def replica(images, labels, stop):
            optimizer = model.optimizer
            with tf.GradientTape() as tape:
                probabilities = model(images, training=True)
                per_example = loss_fn(labels, probabilities) * tf.gather(class_weights, labels)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            correct = tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels)
            count = tf.cast(tf.size(labels), tf.float32)
            return tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(tf.cast(correct, tf.float32)), count, stop])

        @tf.function
        def step(iterator, stop):
            images, labels = next(iterator)
            return strategy.reduce("SUM", strategy.run(replica, args=(images, labels, stop)), axis=None)

        return step

    def _eval_step(self):
        model, strategy = self.model, self.strategy
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)

        def replica(images, labels, weights):
            probabilities = model(images, training=False)
            per_example = loss_fn(labels, probabilities) * weights
            correct = tf.cast(tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels), tf.float32)
            return tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)])

        @tf.function
        def step(iterator):
            return strategy.reduce("SUM", strategy.run(replica, args=next(iterator)), axis=None)

        return step

    def barrier(self) -> None:
        """Returns once every worker got here (the others wait while the chief evaluates and saves)."""
        self._same_on_all_workers(0.0)

    def _same_on_all_workers(self, value: float) -> bool:
        """True when every replica holds the same ``value`` (SUM of v, v * v and 1: equal iff no spread)."""

        strategy = self.strategy

        @tf.function
        def spread(v):
            def replica():
                return tf.stack([v, v * v, tf.constant(1.0, tf.float64)])

            return strategy.reduce("SUM", strategy.run(replica), axis=None)

        total, squares, count = spread(tf.constant(value, tf.float64)).numpy()
        mean = total / count
        return abs(squares / count - mean * mean) < 1e-6

    # ---- the loop -------------------------------------------------------------------------------------

    def fit(self):
        """Trains every phase from the last checkpoint; returns the run's recorder (a stand-in on other
        workers) with ``cancelled`` set when the chief's cancel file stopped the cluster."""
        from core.models import set_trainable_top
        from core.training import check_diverged

        state = self.backup.read_state() if tf.train.latest_checkpoint(self.backup.checkpoints) else None
        start = int(state["epoch"]) if state else 0
        epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.callbacks.on_train_begin()
        if state:
            self._restore_callbacks(state)
        cancelled = stopped = False
        phase_start = 0
        for phase, (epochs, learning_rate, trainable) in enumerate(self.phases):
            phase_end = phase_start + epochs
            if start >= phase_end:
                phase_start = phase_end
                continue
            set_trainable_top(self.model, trainable)
            with self.strategy.scope():
                self.model.compile(
                    optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
                )
                self.model.optimizer.build(self.model.trainable_variables)
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, epoch=epoch_counter)
            manager = tf.train.CheckpointManager(checkpoint, str(self.backup.own_checkpoints), max_to_keep=2)
            if state and start > phase_start:
                self._restore(state, phase, epoch_counter)
            train_step, eval_step = self._train_step(), self._eval_step()
            for epoch in range(max(start, phase_start), phase_end):
                stopped, logs = self._epoch(epoch, train_step, eval_step)
                if stopped:
                    cancelled = self.run is not None and self.run.file(runs.CANCEL_FILE).exists()
                    break
                epoch_counter.assign(epoch + 1)
                saved = manager.save()
                if self.run is not None:
                    self.backup.write_state(self._state(epoch + 1, phase, saved))
                elif self.progress:
                    self.progress({"stage": "worker", "message": f"worker {self.rank}: epoch {epoch + 1} done"})
                if self.model.stop_training:  # early stopping ends a phase; fine-tuning still follows
                    break
            if stopped:
                break
            self.model.stop_training = False
            phase_start = phase_end
        self.callbacks.on_train_end()
        recorder = self.recorder or _WorkerRecorder()
        recorder.cancelled = cancelled
        if self.recorder is not None:
            check_diverged(self.recorder, self.config)
        return recorder

    def _epoch(self, epoch: int, train_step, eval_step):
        self.callbacks.on_epoch_begin(epoch)
        iterator = iter(self.train_data)
        totals = np.zeros(3)
        stopped = False
        for step in range(self.steps):
            local_stop = self.model.stop_training or (self.run is not None and self.run.file(runs.CANCEL_FILE).exists())
            sums = train_step(iterator, tf.constant(float(local_stop), tf.float32)).numpy()
            totals += sums[:3]
            self.callbacks.on_train_batch_end(step, {"loss": float(sums[0] / max(sums[2], 1.0))})
            if sums[3] > 0:  # a stop every worker saw in the same step's sums: all break together
                stopped = True
                break
        logs = {"loss": float(totals[0] / max(totals[2], 1.0)), "accuracy": float(totals[1] / max(totals[2], 1.0))}
        if not stopped and self.val_data is not None:
            val_iterator = iter(self.val_data)
            sums = np.zeros(3)
            for _ in range(self.val_steps):
                sums += eval_step(val_iterator).numpy()
            logs.update(val_loss=float(sums[0] / max(sums[2], 1.0)), val_accuracy=float(sums[1] / max(sums[2], 1.0)))
        if not stopped:
            for tracker in self.trackers.values():
                tracker.end_pass()
        self.callbacks.on_epoch_end(epoch, logs)
        return stopped, logs

    # ---- resuming -------------------------------------------------------------------------------------

    def _state(self, epoch: int, phase: int, checkpoint: str) -> dict:
        callbacks = {
            type(cb).__name__: {k: _plain(getattr(cb, k)) for k in CALLBACK_STATE if hasattr(cb, k)}
            for cb in self.callback_objects
            if isinstance(
                cb, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau, keras.callbacks.ModelCheckpoint)
            )
        }
        learning_rate = float(np.asarray(self.model.optimizer.learning_rate))
        rows = self.recorder.rows if self.recorder else []
        return {
            "epoch": epoch,
            "phase": phase,
            "checkpoint": checkpoint,
            "rows": rows,
            "callbacks": callbacks,
            "learning_rate": learning_rate,
        }

    def _restore(self, state: dict, phase: int, epoch_counter) -> None:
        """Every worker restores the chief's last checkpoint, then checks they all resumed the same epoch
        (a backup folder that is not shared would leave one worker starting over)."""
        latest = state.get("checkpoint") or tf.train.latest_checkpoint(self.backup.checkpoints)
        if state.get("phase") == phase:
            tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, epoch=epoch_counter).restore(
                latest
            ).expect_partial()
            self.model.optimizer.learning_rate = state.get("learning_rate", self.model.optimizer.learning_rate)
        else:  # the checkpoint ended the previous phase: this phase starts with a fresh optimizer
            tf.train.Checkpoint(model=self.model, epoch=epoch_counter).restore(latest).expect_partial()
        if not self._same_on_all_workers(float(epoch_counter.numpy())):
            raise DistributeError(
                f"The workers restored different epochs (this one: {int(epoch_counter.numpy())}): the backup folder "
                f"{self.backup.path} must be one folder that every worker reads (a shared volume)."
            )
        self.resumed_from.append(int(state["epoch"]))

    def _restore_callbacks(self, state: dict) -> None:
        saved = state.get("callbacks", {})
        for cb in self.callback_objects:
            for key, value in saved.get(type(cb).__name__, {}).items():
                setattr(cb, key, value)
        if self.recorder is not None:
            self.recorder.rows = list(state.get("rows", []))
            if self.recorder.rows:
                import pandas as pd

                runs.atomic_write_csv(self.run.file(runs.HISTORY_FILE), pd.DataFrame(self.recorder.rows))
            self._restore_drift(int(state["epoch"]))

    def _restore_drift(self, epochs: int) -> None:
        from core.drift import ExplanationDrift, load_drift

        saved = load_drift(self.run)
        for cb in self.callback_objects:
            drift = getattr(cb, "inner", cb)
            if isinstance(drift, ExplanationDrift) and saved and saved.get("epochs"):
                keep = [i for i, e in enumerate(saved["epochs"]) if e <= epochs]
                drift.maps = [saved["maps"][i].astype(np.float16) for i in keep]
                drift.epochs = [saved["epochs"][i] for i in keep]

    def pipeline_summary(self) -> dict:
        """run.json's ``input_pipeline``, as the chief saw its share of the files."""
        skipped = sum(t.summary()["skipped_files"] for t in self.trackers.values())
        every = np.concatenate([self.routes["train"], self.routes["val"]])
        return {
            "decoders_on_chief": {
                "tensorflow": int((every != pipeline.ROUTE_PILLOW).sum()),
                "pillow": int((every == pipeline.ROUTE_PILLOW).sum()),
            },
            "cache": None,
            "batch_size": self.per_worker,
            "unreadable_files_on_chief": skipped,
            "unreadable_examples": [e for t in self.trackers.values() for e in t.summary()["examples"]][:10],
        }


class _WorkerRecorder:
    """What `Loop.fit` returns on workers other than the chief (they keep no history)."""

    cancelled = False
    rows: list = []


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value if isinstance(value, (int, float, type(None))) else float(value)
