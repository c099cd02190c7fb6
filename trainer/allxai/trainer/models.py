"""The model zoo. Every model takes float pixels in [0, 255] and scales them itself."""

from __future__ import annotations

from typing import Any

import keras

ARCHITECTURES = ("allnet",)


def build_allnet(num_classes: int, input_size: tuple[int, int], dropout: float = 0.2) -> Any:
    """ALL-Net (Thiriveedhi et al., PeerJ CS 2025), as the paper describes it.

    Pixels / 255; three blocks of 2x2 max-pooling then a 3x3 convolution with 64, 128 and 256
    filters and ReLU; global average pooling; dense 256, 512 and 1024 with ReLU; dropout 0.2;
    softmax.
    """
    height, width = input_size
    inputs = keras.Input((height, width, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (64, 128, 256):
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    for units in (256, 512, 1024):
        x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="allnet")


def build_model(arch: str, num_classes: int, input_size: tuple[int, int]) -> Any:
    """Build an uncompiled Keras model by architecture name."""
    if arch == "allnet":
        return build_allnet(num_classes, input_size)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
