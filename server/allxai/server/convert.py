"""Translation between allxai.v1 messages and the core's plain values, in one place."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import grpc

from allxai.explainer.result import Quality
from allxai.server.audit import sha256
from allxai.server.backends.base import ModelInfo, ModelSpec
from allxai.server.errors import InvalidInput
from allxai.server.explain_options import ExplainOptions, Picture
from allxai.server.outcomes import Classification, ExplainOutcome, SpecimenSummary, Timings
from allxai.v1 import diagnosis_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


def model_spec(message: pb.ModelSpec) -> ModelSpec:
    choice = message.WhichOneof("version_choice")
    if choice == "version" and message.version < 1:
        raise InvalidInput("model_spec.version", "versions are positive integers")
    return ModelSpec(
        name=message.name,
        version=message.version if choice == "version" else None,
        version_label=message.version_label if choice == "version_label" else None,
    )


def time_left(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, float(remaining))


def model_ref(info: ModelInfo) -> pb.ModelRef:
    return pb.ModelRef(name=info.name, version=info.version)


def classification(c: Classification) -> pb.Classification:
    out = pb.Classification(
        scores=[pb.ClassScore(label=n, score=s) for n, s in zip(c.class_names, c.scores, strict=True)],
        label=c.label,
        confidence=c.confidence,
        label_index=c.label_index,
        prediction_set=c.prediction_set,
    )
    # Optional fields stay absent when nothing was checked: "no check" is not "in domain".
    if c.in_domain is not None:
        out.in_domain = c.in_domain
    if c.domain_score is not None:
        out.domain_score = c.domain_score
    if c.domain_threshold is not None:
        out.domain_threshold = c.domain_threshold
    if c.coverage is not None:
        out.coverage = c.coverage
    if c.finding is not None:
        f = c.finding
        if f.scale is not None:
            out.estimated_scale = f.scale
            out.scale_source = f.scale_source
        out.white_cells = f.white_cells
        top, left, bottom, right = f.region
        out.region.CopyFrom(pb.Region(top=top, left=left, bottom=bottom, right=right))
        out.domain_reasons.extend(f.reasons)
    return out


def specimen_summary(summary: SpecimenSummary) -> pb.SpecimenSummary:
    return pb.SpecimenSummary(
        counts=[pb.ClassCount(label=k, count=v) for k, v in summary.counts.items()],
        blast_fraction=summary.blast_fraction,
        review_first=summary.review_first,
        out_of_domain=summary.out_of_domain,
        ambiguous=summary.ambiguous,
        counted=summary.counted,
        needs_review=summary.needs_review,
        review_reason=summary.review_reason,
    )


def judgement(c: Classification) -> dict[str, Any]:
    """The domain check and the prediction set, for the audit trail."""
    return {
        "in_domain": c.in_domain,
        "domain_score": c.domain_score,
        "domain_threshold": c.domain_threshold,
        "prediction_set": list(c.prediction_set),
        "coverage": c.coverage,
        "estimated_scale": c.finding.scale if c.finding else None,
        "white_cells": c.finding.white_cells if c.finding else None,
        "domain_reasons": list(c.finding.reasons) if c.finding else [],
    }


def alpha(value: float) -> float | None:
    """A request's miscoverage level: 0 means the server's default (None here)."""
    return value or None


def timings(t: Timings) -> pb.Timings:
    out = pb.Timings()
    out.preprocess.FromTimedelta(timedelta(seconds=t.preprocess))
    out.model.FromTimedelta(timedelta(seconds=t.model))
    out.explain.FromTimedelta(timedelta(seconds=t.explain))
    out.total.FromTimedelta(timedelta(seconds=t.total))
    return out


_SEGMENTATIONS: dict[int, str] = {
    pb.SEGMENTATION_UNSPECIFIED: "quickshift",
    pb.SEGMENTATION_QUICKSHIFT: "quickshift",
    pb.SEGMENTATION_SLIC: "slic",
    pb.SEGMENTATION_FELZENSZWALB: "felzenszwalb",
}
_COMPOSITIONS: dict[int, str] = {
    pb.COMPOSITION_UNSPECIFIED: "auto",
    pb.COMPOSITION_GATEWAY: "gateway",
    pb.COMPOSITION_MODEL: "model",
}
_PICTURES: dict[pb.PictureKind.ValueType, Picture] = {
    pb.PICTURE_KIND_OVERLAY: "overlay",
    pb.PICTURE_KIND_MASK: "mask",
    pb.PICTURE_KIND_HEATMAP: "heatmap",
    pb.PICTURE_KIND_FIGURE: "figure",
}
_PICTURE_KINDS = {name: kind for kind, name in _PICTURES.items()}


def _name(names: Mapping[Any, str], number: int) -> str:
    # An enum number this server does not know (a newer client's) stays a number, which
    # options.explain_plan refuses in the client's terms ("unknown segmentation 9").
    return names.get(number, str(number))


def explain_options(message: pb.ExplainOptions) -> ExplainOptions:
    """The options as plain values, as sent: ``explain_options.explain_plan`` checks them."""
    return ExplainOptions(
        num_samples=message.num_samples or None,
        top_k=message.top_k,
        num_features=message.num_features,
        positive_only=message.positive_only if message.HasField("positive_only") else True,
        seed=message.seed if message.HasField("seed") else None,
        target_label=message.target_label,
        batch_size=message.batch_size or None,
        segmentation=_name(_SEGMENTATIONS, message.segmentation),
        segmentation_params=dict(message.segmentation_params),
        hide_color=tuple(message.hide_color) or None,
        adaptive=message.adaptive,
        composition=_name(_COMPOSITIONS, message.composition),
        pictures=tuple(_name(_PICTURES, kind) for kind in message.pictures),
    )


def quality(quality: Quality | None) -> pb.ExplanationQuality | None:
    """The quality figures; R² and stability stay absent when there are none (never NaN on the wire)."""
    if quality is None:
        return None
    out = pb.ExplanationQuality(
        local_prediction=quality.local_prediction,
        model_prediction=quality.model_prediction,
        cell_share=quality.cell_share,
        background_share=quality.background_share,
        corner_share=quality.corner_share,
        evidence=pb.EVIDENCE_NONE if quality.no_evidence else pb.EVIDENCE_FOUND,
    )
    if quality.r2 is not None:
        out.r2 = quality.r2
    if quality.stability is not None:
        out.stability = quality.stability
    return out


def _finite(value: float) -> float | None:
    # An R² of one sample is NaN: absent on the wire, where proto JSON would write the string "NaN".
    return value if math.isfinite(value) else None


def display_name(model: ModelInfo, label: str) -> str:
    """The card's display name of ``label`` (the label itself when the card gives none)."""
    names = json.loads(model.card_json or "{}").get("display_names") or {}
    return str(names.get(label) or label)


def explain_response(
    outcome: ExplainOutcome, request: pb.ExplainRequest, request_id: str
) -> pb.ExplainResponse:
    from allxai.explainer import render  # noqa: PLC0415

    result = outcome.explanation
    label = outcome.model.class_names[result.label_index]
    # Pictures are read by people: they name the class as the model card shows it ("Pre-B ALL", not "Pre").
    shown = display_name(outcome.model, label)
    pictures = []
    t0 = time.perf_counter()
    for name in outcome.pictures:
        if name == "overlay":
            png = render.to_png(render.overlay(outcome.image, result))
        elif name == "mask":
            png = render.to_png(render.mask_image(outcome.image, result))
        elif name == "heatmap":
            png = render.to_png(render.heatmap_with_legend(result, shown))
        else:
            title = f"{shown} {outcome.classification.confidence:.1%}"
            if outcome.classification.in_domain is False:  # the figure is filed on its own: say it there
                title += " (OUTSIDE THE TRAINING DOMAIN)"
            png = render.figure(outcome.image, result, title, label=shown)
        pictures.append(pb.Picture(kind=_PICTURE_KINDS[name], png=png))
    outcome.timings.explain += time.perf_counter() - t0
    outcome.timings.total += time.perf_counter() - t0
    return pb.ExplainResponse(
        classification=classification(outcome.classification),
        explanation=pb.Explanation(
            label=label,
            weights=[pb.SuperpixelWeight(segment=s, weight=w) for s, w in result.weights],
            top_segments=result.top_segments,
            seed=result.seed,
            num_samples=result.num_samples,
            num_segments=int(result.segments.max()) + 1,
            intercept=result.intercept,
            score=_finite(result.score),
            local_prediction=result.local_prediction,
            pictures=pictures,
            quality=quality(result.quality),
            stopped_early=result.stopped_early,
            composition=pb.COMPOSITION_MODEL if result.composition == "model" else pb.COMPOSITION_GATEWAY,
            warnings=outcome.warnings,
        ),
        model=model_ref(outcome.model),
        request_id=request_id,
        specimen_id=request.specimen_id,
        image_id=request.image.image_id,
        timings=timings(outcome.timings),
    )


def scores(c: Classification) -> dict[str, float]:
    return dict(zip(c.class_names, c.scores, strict=True))


def explain_record(outcome: ExplainOutcome, request: pb.ExplainRequest, request_id: str) -> dict[str, Any]:
    """What the audit trail keeps of one explanation: parameters, seed and answer, never the image."""
    options = explain_options(request.options)
    result = outcome.explanation
    return {
        "kind": "explain",
        "request_id": request_id,
        "specimen_id": request.specimen_id,
        "image_sha256": sha256(request.image.data),
        "model": {"name": outcome.model.name, "version": outcome.model.version},
        "label": outcome.classification.label,
        "scores": scores(outcome.classification),
        **judgement(outcome.classification),
        "explanation": {
            "label": outcome.model.class_names[result.label_index],
            "seed": result.seed,
            "num_samples": result.num_samples,
            "requested_samples": options.num_samples,
            "adaptive": options.adaptive,
            "segmentation": options.segmentation,
            "segmentation_params": options.segmentation_params,
            "top_k": options.top_k,
            "num_features": options.num_features,
            "positive_only": options.positive_only,
            "hide_color": options.hide_color,
            "composition": result.composition,
            "top_segments": list(result.top_segments),
        },
    }
