"""The training configuration: one TOML file per recipe, overridable from the command line."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from allxai.trainer.models import ARCHITECTURES


class ConfigError(ValueError):
    """A configuration that cannot be used, with the field and the reason."""


class TrainConfig(BaseModel):
    """Everything a training run needs; every field has the default a CPU user would want."""

    # No inf or nan anywhere: an infinite learning rate passes ``gt=0`` and would train to NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Data
    data: Path = Field(Path("data"), description="dataset root")
    layout: Literal["auto", "cnmc", "aria", "folder"] = "auto"
    task: Literal["native", "binary"] = "native"
    block_size: int = Field(20, gt=0, description="Aria: contiguous file numbers per group")
    near_duplicate_distance: int = Field(
        6,
        ge=-1,
        le=64,
        description="Aria: join the groups of images whose difference hashes differ in at most this "
        "many bits (-1: off)",
    )
    max_per_class: int = Field(0, ge=0, description="use at most this many images per class (0: all)")
    input_size: int = Field(224, ge=32)
    input: Literal["field", "cell"] = Field(
        "field",
        description='"field": the whole image resized; "cell": a crop around each white cell, at one scale, '
        "stain-normalised, with everything off the cell blanked (allxai.contract.cellview)",
    )
    field_um: float = Field(28.0, gt=0, description="cell input: side of the crop in micrometres")
    margin_um: float = Field(2.0, ge=0, description="cell input: margin kept around the cell's mask, in µm")
    cells_per_field: int = Field(
        4, ge=1, description="cell input: white cells per training field (largest first), each a crop"
    )
    stain_normalise: bool = Field(True, description="cell input: Reinhard stain normalisation")
    # Model
    arch: str = "allnet"
    weights: str = Field(
        "imagenet", description='"imagenet", "none", or a local weights file (transfer models)'
    )
    freeze_backbone: bool = Field(True, description="train only the head in the first stage")
    # Optimisation
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    loss: Literal["sparse_categorical_crossentropy", "binary_crossentropy"] = (
        "sparse_categorical_crossentropy"
    )
    class_weights: bool = True
    augment: Literal["none", "paper1", "paper2", "cell"] = Field(
        "none",
        description='"cell": flips, quarter turns and HED stain jitter (for cell crops, which have no up)',
    )
    stain_jitter: float = Field(
        0.05, ge=0, le=0.5, description="cell augmentation: spread of the HED stain jitter (0: none)"
    )
    balance_classes: Literal["smallest", "all_smaller"] = Field(
        "smallest",
        description='paper2: augment the smallest class only (as the paper did), or "all_smaller": '
        "every class smaller than the largest",
    )
    early_stopping_patience: int = Field(0, ge=0, description="0: off")
    reduce_lr_patience: int = Field(
        0, ge=0, description="halve the learning rate after this many flat epochs; 0: off"
    )
    fine_tune_epochs: int = Field(0, ge=0)
    fine_tune_layers: int = Field(
        30, ge=-1, description="top backbone layers unfrozen to fine-tune (-1: all)"
    )
    fine_tune_learning_rate: float = Field(1e-5, gt=0)
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    jit_compile: bool = Field(
        False, description="XLA; compiling large backbones costs minutes and did not pay here"
    )
    run_eagerly: bool = Field(
        False, description="skip graph tracing: faster for a few tiny batches, slower for real runs"
    )
    # Evaluation
    folds: int = Field(0, ge=0, description="stratified group k-fold; 0 or 1: one train/validation split")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 42
    # Calibration at export (the domain gate and the conformal prediction sets)
    calibrate: bool = Field(
        True,
        description="fit the input-domain gate and the conformal levels on the best fold's validation "
        "split (held out by group) and build them into the export",
    )
    domain_acceptance: float = Field(
        0.975,
        gt=0.5,
        le=1,
        description="share of held-out in-domain images the domain gate accepts (its threshold is their "
        "quantile; 0.975 rather than 0.95, since a validation split of a few smear blocks makes a lower "
        "quantile shaky)",
    )
    # Output
    out: Path = Path("models")
    name: str = Field(
        "allnet",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="model name: the export goes to <out>/<name>/<version>, so one plain folder name "
        "(letters, digits, '.', '_', '-'; no path separators, no leading dot)",
    )
    version: int = Field(1, gt=0)
    reports: Path = Path("reports")
    export: bool = True

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(ARCHITECTURES)}")
        return value

    @property
    def weights_arg(self) -> str | Path | None:
        """The ``weights`` argument for Keras."""
        if self.weights == "none":
            return None
        return self.weights if self.weights == "imagenet" else Path(self.weights)


def load_config(path: Path | None, overrides: dict[str, str] | None = None, **values: Any) -> TrainConfig:
    """Read a TOML recipe (its paths are relative to the current folder), then apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        data.pop("description", None)
    # Override values stay strings: pydantic converts each to its field's type ("3" to an int for
    # epochs, "2024" stays a string for name), which a guess by the value's look cannot do.
    data.update(overrides or {})
    data.update({k: v for k, v in values.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise ConfigError(f"bad configuration: {problems}") from exc


def _problem(error: Any) -> str:
    where = ".".join(map(str, error["loc"]))
    if error["type"] == "string_pattern_mismatch" and where == "name":
        return (
            f"name: {error['input']!r} is not a plain folder name (letters, digits, '.', '_', '-', "
            "starting with a letter or digit, at most 64 characters)"
        )
    return f"{where}: {error['msg']}"
