"""Fitting one model on one split: tf.data input, class weights, augmentation, early stopping,
the best checkpoint, an optional fine-tuning stage, mixed precision and MirroredStrategy on GPUs."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from allxai.trainer.config import TrainConfig
from allxai.trainer.models import build_model, set_trainable

log = logging.getLogger(__name__)


def balanced_class_weights(labels: npt.NDArray[np.int64], num_classes: int) -> dict[int, float]:
    """n_samples / (n_classes * bincount), as scikit-learn's "balanced" and paper 1 compute them."""
    counts = np.bincount(labels, minlength=num_classes)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def distribution(config: TrainConfig) -> Any:
    """MirroredStrategy and mixed precision when GPUs are present; the default strategy otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    use_mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()


@dataclass
class FitResult:
    """A trained model (with its best weights), its per-epoch history and how long it took."""

    model: Any
    history: dict[str, list[float]]
    epochs: int
    seconds: float


def _dataset(
    images: npt.NDArray[np.uint8],
    onehot: npt.NDArray[np.float32],
    batch: int,
    seed: int,
    train: bool,
    augment: str,
    sample_weights: npt.NDArray[np.float32] | None = None,
    stain_jitter: float = 0.0,
) -> Any:
    """Batches of float32 images with one-hot labels (and per-sample weights, when given)."""
    parts = (images, onehot) if sample_weights is None else (images, onehot, sample_weights)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if train:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if train and augment == "paper1":
        from allxai.trainer.augment import paper1_dataset  # noqa: PLC0415

        ds = paper1_dataset(ds, seed)
    elif train and augment == "cell":
        from allxai.trainer.augment import cell_dataset  # noqa: PLC0415

        ds = cell_dataset(ds, seed, stain_jitter)
    else:
        ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _sample_weights(labels: npt.NDArray[np.int64], weights: dict[int, float] | None) -> Any:
    return None if weights is None else np.asarray([weights[int(c)] for c in labels], np.float32)


def _compile(model: Any, config: TrainConfig, learning_rate: float, num_classes: int) -> None:
    # Labels are one-hot so that Keras's F1Score can run per epoch; categorical cross-entropy on
    # one-hot labels equals paper 2's sparse categorical cross-entropy, and paper 1's
    # binary_crossentropy is Keras's BCE over the softmax outputs, as the paper's code did.
    loss = (
        keras.losses.BinaryCrossentropy()
        if config.loss == "binary_crossentropy"
        else (keras.losses.CategoricalCrossentropy())
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss,
        metrics=["accuracy", keras.metrics.F1Score(average="macro", name="f1_score")],
        jit_compile=config.jit_compile,
        run_eagerly=config.run_eagerly,
    )


def fit(
    config: TrainConfig,
    num_classes: int,
    train: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    val: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    checkpoint_dir: Path,
    seed: int,
) -> FitResult:
    """Build, train and return the model with the weights of its best validation epoch."""
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    x_train, y_train = train
    if config.augment == "paper2":
        from allxai.trainer.balance import balance_minority_classes  # noqa: PLC0415

        balanced = balance_minority_classes(x_train, y_train, seed=seed, classes=config.balance_classes)
        log.info(
            "paper 2 balancing (%s) added %s images per class",
            config.balance_classes,
            balanced.added_per_class,
        )
        x_train, y_train = balanced.images, balanced.labels
    weights = balanced_class_weights(y_train, num_classes) if config.class_weights else None
    eye = np.eye(num_classes, dtype=np.float32)
    size = (config.input_size, config.input_size)
    strategy = distribution(config)
    scope = strategy.scope()
    with scope:
        model = build_model(config.arch, num_classes, size, config.weights_arg)
        if config.freeze_backbone:
            set_trainable(model, 0)
        _compile(model, config, config.learning_rate, num_classes)
    # Class weights as per-sample weights: tf.data then carries them with each batch.
    train_ds = _dataset(
        x_train,
        eye[y_train],
        config.batch_size,
        seed,
        True,
        config.augment,
        _sample_weights(y_train, weights),
        config.stain_jitter,
    )
    val_ds = _dataset(val[0], eye[val[1]], config.batch_size, seed, False, "none")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    best = checkpoint_dir / "best.weights.h5"
    callbacks: list[Any] = [
        keras.callbacks.ModelCheckpoint(
            str(best), monitor="val_loss", save_best_only=True, save_weights_only=True
        )
    ]
    if config.reduce_lr_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=config.reduce_lr_patience
            )
        )
    if config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience)
        )
    verbose = 1 if sys.stdout.isatty() else 2
    # shuffle=False: the tf.data pipeline shuffles itself (Keras would only warn and ignore it).
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,
    )
    merged = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    epochs = len(merged.get("loss", []))
    if config.fine_tune_epochs and config.arch != "allnet":
        model.load_weights(str(best))
        with scope:
            set_trainable(model, config.fine_tune_layers)
            _compile(model, config, config.fine_tune_learning_rate, num_classes)
        more = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs + config.fine_tune_epochs,
            initial_epoch=epochs,
            shuffle=False,
            callbacks=callbacks,
            verbose=verbose,
        )
        for key, values in more.history.items():
            merged.setdefault(key, []).extend(float(v) for v in values)
        epochs += len(more.history.get("loss", []))
    if best.exists():
        model.load_weights(str(best))
    return FitResult(model, merged, epochs, time.monotonic() - started)


def predict(model: Any, images: npt.NDArray[np.uint8], batch_size: int = 64) -> npt.NDArray[np.float32]:
    """Class probabilities for uint8 images."""
    ds = tf.data.Dataset.from_tensor_slices(images).map(lambda x: tf.cast(x, tf.float32)).batch(batch_size)
    return np.asarray(model.predict(ds, verbose=0), np.float32)
