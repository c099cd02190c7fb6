"""A request's explanation options, and the one place they are checked.

:class:`ExplainOptions` holds what the client sent, translated to plain values but not checked (the
transport maps an enum number it does not know to its decimal string, which no check accepts).
:func:`explain_plan` checks every option against the server's limits and returns an
:class:`ExplainPlan`: the explainer's typed settings, which the core and the explainer trust as they
are. Only what depends on the model (its classes, whether it has a ``compose`` signature) is checked
later, once the model is known.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

from allxai.server.errors import InvalidInput
from allxai.server.settings import Settings

if TYPE_CHECKING:
    from allxai.explainer.engine import CompositionMode, ExplainSettings
    from allxai.explainer.segmentation import Method

Picture = Literal["overlay", "mask", "heatmap", "figure"]
PICTURES: tuple[Picture, ...] = ("overlay", "mask", "heatmap", "figure")
_COMPOSITIONS = ("auto", "gateway", "model")
_MAX_SEED = 2**32


@dataclass
class ExplainOptions:
    """A request's explanation options as sent; ``None`` (and 0 for counts) means the server's default."""

    num_samples: int | None = None
    top_k: int = 5
    num_features: int = 100000
    positive_only: bool = True
    seed: int | None = None
    target_label: str = ""
    batch_size: int | None = None
    segmentation: str = "quickshift"
    segmentation_params: dict[str, float] = field(default_factory=dict)
    hide_color: tuple[int, ...] | None = None
    adaptive: bool = False
    composition: str = "auto"
    pictures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExplainPlan:
    """Checked options: how to explain (trusted by the explainer), which class, which pictures."""

    settings: ExplainSettings
    target_label: str | None  # None: the predicted class
    pictures: tuple[Picture, ...]


def explain_plan(options: ExplainOptions, limits: Settings) -> ExplainPlan:
    """Check ``options`` against the server's ``limits`` and fill in the defaults.

    Raises :class:`InvalidInput` naming the first wrong field (``options.<name>``).
    """
    # The explainer imports lime and scikit-image: only explanations pay for them.
    from allxai.explainer.engine import ExplainSettings  # noqa: PLC0415
    from allxai.explainer.segmentation import DEFAULTS, SegmentationSpec  # noqa: PLC0415

    for kind in options.pictures:
        if kind not in PICTURES:
            raise InvalidInput("options.pictures", f"unknown picture kind {kind}")
    if options.segmentation not in DEFAULTS:
        raise InvalidInput("options.segmentation", f"unknown segmentation {options.segmentation}")
    if options.composition not in _COMPOSITIONS:
        raise InvalidInput("options.composition", f"unknown composition {options.composition}")
    hide = options.hide_color
    if hide is not None and len(hide) != 3:
        raise InvalidInput(
            "options.hide_color", "give three values [r, g, b], or none for lime's mean colour"
        )
    samples = options.num_samples or limits.explain_default_samples
    if samples < 1 or samples > limits.explain_max_samples:
        raise InvalidInput(
            "options.num_samples", f"{samples} samples; allowed 1 to {limits.explain_max_samples}"
        )
    if options.top_k < 0:
        raise InvalidInput("options.top_k", "must not be negative")
    batch = options.batch_size or limits.predict_batch_size
    if not 1 <= batch <= limits.predict_batch_size:
        # Each batch is built in memory at once: the server's batch size bounds it.
        raise InvalidInput("options.batch_size", f"{batch}; allowed 1 to {limits.predict_batch_size}")
    if options.num_features < 0:
        raise InvalidInput("options.num_features", "must not be negative (0 means all superpixels)")
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    if not 0 <= seed < _MAX_SEED:
        raise InvalidInput("options.seed", "must be between 0 and 2**32 - 1")
    if hide is not None and not all(0 <= c <= 255 for c in hide):
        raise InvalidInput("options.hide_color", "three values from 0 to 255, or none for lime's mean colour")
    segmentation = SegmentationSpec(cast("Method", options.segmentation), dict(options.segmentation_params))
    try:
        segmentation.resolved()
    except ValueError as exc:
        raise InvalidInput("options.segmentation_params", str(exc)) from exc
    settings = ExplainSettings(
        num_samples=samples,
        top_k=options.top_k or 5,
        num_features=options.num_features or 100000,
        positive_only=options.positive_only,
        seed=seed,
        batch_size=batch,
        max_in_flight=limits.explain_max_in_flight,
        compose_batch_size=limits.explain_compose_batch_size,
        segmentation=segmentation,
        hide_color=None if hide is None else (hide[0], hide[1], hide[2]),
        composition=cast("CompositionMode", options.composition),
        adaptive=options.adaptive,
        max_segments=limits.explain_max_segments,
    )
    pictures = cast("tuple[Picture, ...]", options.pictures) or ("overlay",)
    return ExplainPlan(settings, options.target_label or None, pictures)
