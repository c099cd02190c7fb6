"""What an export calibrated for its answers: the input-domain gate and the conformal prediction sets.

Both live in the model card (``domain`` and ``conformal``), written by the trainer at export and read by the
gateway, which applies them to every answer:

- :class:`DomainGate`: ``serving_default`` returns, beside the probabilities, an out-of-domain score per
  image (the output named ``output``; higher is less like the training images). An image whose score is
  above ``threshold`` is outside the training domain. The threshold was set so that ``acceptance`` of the
  in-domain calibration images (held out by group) pass.
- :class:`ConformalSets`: ``qhat`` per calibrated miscoverage level ``alpha``, for
  :func:`allxai.contract.conformal.prediction_set`.

A card without them still serves: its answers say that no domain check was made, and carry no set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from allxai.contract.conformal import DEFAULT_ALPHA, prediction_set


class CalibrationError(ValueError):
    """A card's ``domain`` or ``conformal`` entry that cannot be used."""


@dataclass(frozen=True)
class DomainGate:
    """The domain check an export carries."""

    #: The key of the score in ``serving_default``'s outputs.
    output: str
    #: Scores above it are outside the training domain.
    threshold: float
    #: The share of in-domain calibration images the threshold accepts, e.g. 0.95.
    acceptance: float
    #: The detector, in words.
    method: str = ""
    #: Figures of the calibration and of the held-out checks (images, groups, flagged shares, AUROC).
    figures: Mapping[str, Any] = field(default_factory=dict)

    def in_domain(self, score: float) -> bool:
        """Whether an image with this score is like the training images (NaN never is)."""
        return bool(score <= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "threshold": self.threshold,
            "acceptance": self.acceptance,
            "method": self.method,
            "figures": dict(self.figures),
        }

    @classmethod
    def parse(cls, raw: object) -> DomainGate:
        entry = _mapping(raw, "domain")
        output = entry.get("output")
        if not isinstance(output, str) or not output:
            raise CalibrationError("domain.output must name the score's output in serving_default")
        return cls(
            output=output,
            threshold=_number(entry.get("threshold"), "domain.threshold"),
            acceptance=_share(entry.get("acceptance"), "domain.acceptance"),
            method=str(entry.get("method", "")),
            figures=_mapping(entry.get("figures", {}), "domain.figures"),
        )


@dataclass(frozen=True)
class ConformalSets:
    """Split-conformal calibration: ``qhat`` per miscoverage level."""

    #: ``qhat`` by ``alpha``; ``inf`` where the calibration split was too small for the level.
    qhat: Mapping[float, float]
    method: str = "aps-randomised"
    #: Images of the calibration split.
    calibration_images: int = 0
    #: Coverage and mean set size on the test split, by ``alpha`` (as text keys, as in JSON).
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(sorted(self.qhat))

    def level(self, alpha: float | None) -> float:
        """The calibrated level a request asks for (``None`` or 0: the default); else CalibrationError."""
        wanted = alpha or DEFAULT_ALPHA
        for known in self.qhat:
            if math.isclose(known, wanted, rel_tol=1e-6, abs_tol=1e-9):
                return known
        levels = ", ".join(f"{a:g}" for a in self.alphas)
        raise CalibrationError(f"alpha {wanted:g} was not calibrated; choose one of {levels}")

    def members(self, probabilities: Any, alpha: float, draw: float) -> list[int]:
        """The class indices of one image's set at the calibrated level ``alpha``."""
        return prediction_set(probabilities, self.qhat[alpha], draw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "qhat": {f"{a:g}": (q if math.isfinite(q) else "inf") for a, q in sorted(self.qhat.items())},
            "calibration_images": self.calibration_images,
            "figures": dict(self.figures),
        }

    @classmethod
    def parse(cls, raw: object) -> ConformalSets:
        entry = _mapping(raw, "conformal")
        levels = _mapping(entry.get("qhat"), "conformal.qhat")
        qhat: dict[float, float] = {}
        for key, value in levels.items():
            try:
                alpha = float(key)
            except ValueError as exc:
                raise CalibrationError(f"conformal.qhat has a level {key!r} that is not a number") from exc
            if not 0 < alpha < 1:
                raise CalibrationError(f"conformal.qhat has a level {key!r} outside (0, 1)")
            qhat[alpha] = math.inf if value == "inf" else _number(value, f"conformal.qhat[{key!r}]")
            if not 0 <= qhat[alpha] <= 1 and qhat[alpha] != math.inf:
                raise CalibrationError(f'conformal.qhat[{key!r}] must be from 0 to 1, or "inf"')
        if not any(math.isclose(a, DEFAULT_ALPHA) for a in qhat):
            # Requests that choose no level get the default: a card without it would refuse them all.
            raise CalibrationError(f"conformal.qhat must give the default level {DEFAULT_ALPHA:g}")
        method = entry.get("method", "aps-randomised")
        if method != "aps-randomised":
            raise CalibrationError(f"conformal.method {method!r} is not one the gateway applies")
        images = entry.get("calibration_images", 0)
        if not isinstance(images, int) or isinstance(images, bool) or images < 0:
            raise CalibrationError("conformal.calibration_images must be a whole number")
        return cls(qhat, method, images, _mapping(entry.get("figures", {}), "conformal.figures"))


def _mapping(value: object, key: str) -> dict[str, Any]:
    if not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
        raise CalibrationError(f"{key} must be a JSON object")
    return dict(value)


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CalibrationError(f"{key} must be a finite number; got {value!r}")
    return float(value)


def _share(value: object, key: str) -> float:
    number = _number(value, key)
    if not 0 < number <= 1:
        raise CalibrationError(f"{key} must be in (0, 1]; got {number}")
    return number
