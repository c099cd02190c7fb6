"""The model zoo. Every model takes float pixels in [0, 255] and normalises them itself.

Paper 1's four backbones (InceptionV3, ResNet101V2, VGG19, InceptionResNetV2), two more from
paper 2's comparison (DenseNet201, MobileNetV3Large, EfficientNetV2B0), each with a global
pooling + softmax head, and ALL-Net exactly as paper 2 describes it. Weights: "imagenet" (the
default for real use; Keras downloads them once), a local weights file, or none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras


@dataclass(frozen=True)
class Backbone:
    """A keras.applications constructor and how it expects its pixels."""

    build: Callable[..., Any]
    preprocessing: (
        str  # "tf": [-1, 1]; "caffe": BGR minus ImageNet means; "torch": ImageNet mean/std; "raw": [0, 255]
    )
    default_size: int


def _backbones() -> dict[str, Backbone]:
    apps = keras.applications
    return {
        "inceptionv3": Backbone(apps.InceptionV3, "tf", 299),
        "resnet101v2": Backbone(apps.ResNet101V2, "tf", 224),
        "vgg19": Backbone(apps.VGG19, "caffe", 224),
        "inceptionresnetv2": Backbone(apps.InceptionResNetV2, "tf", 299),
        "densenet201": Backbone(apps.DenseNet201, "torch", 224),
        # These two normalise inside the network (include_preprocessing=True): they take [0, 255].
        "mobilenetv3large": Backbone(apps.MobileNetV3Large, "raw", 224),
        "efficientnetv2b0": Backbone(apps.EfficientNetV2B0, "raw", 224),
    }


ARCHITECTURES = ("allnet", *_backbones().keys())
PAPER1_BACKBONES = ("inceptionv3", "resnet101v2", "vgg19", "inceptionresnetv2")


@keras.saving.register_keras_serializable(package="allxai")
class Normalize(keras.layers.Layer):  # type: ignore[misc]
    """The backbone's own input normalisation, inside the graph (no train/serve skew)."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe", "torch", "raw"):
            raise ValueError(f"unknown normalisation {mode!r}")
        self.mode = mode

    def call(self, x: Any) -> Any:
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            # keras.applications.vgg19.preprocess_input: RGB -> BGR, minus the ImageNet channel means.
            return x[..., ::-1] - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor([0.485, 0.456, 0.406], dtype=x.dtype)
            std = keras.ops.convert_to_tensor([0.229, 0.224, 0.225], dtype=x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


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
    # float32 output even under mixed precision: softmax in float16 loses small probabilities.
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="allnet")


def build_transfer(
    arch: str,
    num_classes: int,
    input_size: tuple[int, int],
    weights: str | Path | None = "imagenet",
    pooling: str = "avg",
    dropout: float = 0.0,
) -> Any:
    """A keras.applications backbone with a pooling + softmax head (paper 1).

    ``weights``: "imagenet" (downloaded by Keras on first use), a path to a local weights file
    for the backbone without its top (``*_notop.h5``), or None for random initialisation.
    """
    spec = _backbones()[arch]
    height, width = input_size
    local = weights is not None and weights != "imagenet"
    if local and not Path(str(weights)).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": None if local else weights,
        "input_shape": (height, width, 3),
    }
    if spec.preprocessing == "raw":
        kwargs["include_preprocessing"] = True
    backbone = spec.build(**kwargs)
    if local:
        backbone.load_weights(str(weights))
    inputs = keras.Input((height, width, 3), name="pixels")
    x = Normalize(spec.preprocessing, name="normalize")(inputs)
    x = backbone(x)
    pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
    x = pool(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=arch)


def build_model(
    arch: str, num_classes: int, input_size: tuple[int, int], weights: str | Path | None = "imagenet"
) -> Any:
    """Build an uncompiled Keras model by architecture name."""
    if arch == "allnet":
        return build_allnet(num_classes, input_size)
    if arch in _backbones():
        return build_transfer(arch, num_classes, input_size, weights)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def backbone_of(model: Any) -> Any | None:
    """The pretrained backbone inside a transfer model, or None for ALL-Net."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


def set_trainable(model: Any, train_top_layers: int) -> None:
    """Freeze the backbone except its top ``train_top_layers`` layers (-1: all, 0: none).

    Batch-normalisation layers stay frozen when fine-tuning, as Keras's transfer-learning guide
    advises: their statistics from ImageNet would be overwritten by small batches.
    """
    backbone = backbone_of(model)
    if backbone is None:
        return
    backbone.trainable = train_top_layers != 0
    if train_top_layers > 0:
        for layer in backbone.layers[:-train_top_layers]:
            layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
