"""The one place that builds requests and reads responses, for both clients."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import grpc

from allxai.client import _results as r
from allxai.v1 import diagnosis_pb2 as pb

_PICTURE_NAMES = {kind: name for name, kind in r.PICTURE_KINDS.items()}
_QUALITY = (
    "r2",
    "local_prediction",
    "model_prediction",
    "stability",
    "cell_share",
    "background_share",
    "corner_share",
)


def client_error(exc: grpc.RpcError, image_offset: int = 0) -> r.AllxaiClientError:
    """The error a failed call raises; ``image_offset`` renumbers ``images[i]`` for a batched specimen."""
    details = exc.details() or ""
    match = r.IMAGE_FIELD.match(details)
    if match and image_offset:
        details = f"images[{int(match.group(1)) + image_offset}]{details[match.end() :]}"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        details = _tls_words(details)
    return r.AllxaiClientError(exc.code().name, details)


def _tls_words(details: str) -> str:
    """Name a TLS mismatch as such: gRPC reports it as a lost connection, in OpenSSL's words."""
    lowered = details.lower()
    if "handshake failed" in lowered or "ssl_error" in lowered:
        return (
            "TLS handshake failed: the gateway does not speak TLS, or its certificate is not signed by the "
            f"CA given (--tls-ca) or names another host (--tls-server-name). gRPC said: {details}"
        )
    if "socket closed" in lowered:
        # What a plaintext client sees of a TLS-only server: the server hangs up on the first bytes.
        return (
            f"{details} (the gateway closed the connection: if it requires TLS, connect with TLS, e.g. --tls "
            "and --tls-ca)"
        )
    return details


def model_spec(model: str, version: int | None, version_label: str | None) -> pb.ModelSpec:
    """The ModelSpec every call of a client carries."""
    spec = pb.ModelSpec(name=model)
    if version is not None:
        spec.version = version
    elif version_label is not None:
        spec.version_label = version_label
    return spec


def image_message(image: r.ImageInput, image_id: str | None = None) -> pb.Image:
    """An Image message; a path is read now (``OSError`` if it cannot be) and names the image by default."""
    if isinstance(image, bytes):
        return pb.Image(data=image, image_id=image_id or "")
    path = Path(image)
    return pb.Image(data=path.read_bytes(), image_id=image_id if image_id is not None else path.name)


def check_alpha(alpha: float | None) -> float:
    """The ``alpha`` of a request: 0 (the server's default level) for None.

    ``ValueError`` unless ``alpha`` is a miscoverage level strictly between 0 and 1; whether the model was
    calibrated for it is the gateway's to say (INVALID_ARGUMENT names the levels it has).
    """
    if alpha is None:
        return 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ValueError(
            f"alpha must be a level between 0 and 1, one the model was calibrated for (e.g. 0.05): {alpha!r}"
        )
    return float(alpha)


def classify_request(
    image: r.ImageInput,
    image_id: str | None,
    spec: pb.ModelSpec,
    specimen_id: str,
    alpha: float | None = None,
) -> pb.ClassifyRequest:
    """A Classify request; ``ValueError`` for an alpha that cannot be a level."""
    level = check_alpha(alpha)
    return pb.ClassifyRequest(
        image=image_message(image, image_id), model_spec=spec, specimen_id=specimen_id, alpha=level
    )


def _float32(value: float) -> float | None:
    """A float32 field as the shortest decimal that is the same float32 (0.95, not 0.949999988...).

    None for NaN or infinity, which no JSON may carry.
    """
    if not math.isfinite(value):
        return None
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == value:
            return short
    return value


def cell_result(c: pb.Classification, model: pb.ModelRef, request_id: str, image_id: str) -> r.ClassifyResult:
    return r.ClassifyResult(
        label=c.label,
        confidence=c.confidence,
        scores={s.label: s.score for s in c.scores},
        model=model.name,
        version=model.version,
        request_id=request_id,
        image_id=image_id,
        # Absent fields mean the model carries no domain check or no calibration: None, never a default.
        in_domain=c.in_domain if c.HasField("in_domain") else None,
        domain_score=_float32(c.domain_score) if c.HasField("domain_score") else None,
        domain_threshold=_float32(c.domain_threshold) if c.HasField("domain_threshold") else None,
        prediction_set=list(c.prediction_set),
        coverage=_float32(c.coverage) if c.HasField("coverage") else None,
        estimated_scale=_float32(c.estimated_scale) if c.HasField("estimated_scale") else None,
        scale_source=c.scale_source,
        white_cells=c.white_cells,
        domain_reasons=list(c.domain_reasons),
    )


def classify_result(response: pb.ClassifyResponse) -> r.ClassifyResult:
    """The result of a Classify call."""
    return cell_result(response.classification, response.model, response.request_id, response.image_id)


def explain_request(
    image: r.ImageInput, spec: pb.ModelSpec, params: r.ExplainParams
) -> pb.StreamExplainRequest:
    """A StreamExplain request; ``ValueError`` names an unknown picture kind or a bad alpha."""
    kinds = []
    for name in params.get("pictures", ("overlay",)):
        if name not in r.PICTURE_KINDS:
            raise ValueError(f"unknown picture {name!r}; choose from {', '.join(r.PICTURE_KINDS)}")
        kinds.append(r.PICTURE_KINDS[name])
    options = pb.ExplainOptions(
        num_samples=params.get("num_samples", 0),
        top_k=params.get("top_k", 5),
        positive_only=params.get("positive_only", True),
        pictures=kinds,
        target_label=params.get("target_label", ""),
        adaptive=params.get("adaptive", False),
    )
    seed = params.get("seed")
    if seed is not None:
        options.seed = seed
    alpha = check_alpha(params.get("alpha"))
    request = pb.ExplainRequest(
        image=image_message(image, params.get("image_id")),
        model_spec=spec,
        specimen_id=params.get("specimen_id", ""),
        options=options,
        alpha=alpha,
    )
    return pb.StreamExplainRequest(request=request)


def explain_event(
    event: pb.StreamExplainResponse, progress: r.ProgressFn | None, result: pb.ExplainResponse | None
) -> pb.ExplainResponse | None:
    """Pass a progress event to ``progress``; return the result so far (the event's, if it has one)."""
    if event.HasField("progress"):
        if progress is not None:
            progress(event.progress.samples_done, event.progress.samples_total)
        return result
    return event.result if event.HasField("result") else result


def explain_result(response: pb.ExplainResponse | None) -> r.ExplainResult:
    """The result of a StreamExplain call, from its last message."""
    if response is None:
        raise r.AllxaiClientError("UNKNOWN", "the server closed the stream without a result")
    e = response.explanation
    q = e.quality
    return r.ExplainResult(
        classification=cell_result(
            response.classification, response.model, response.request_id, response.image_id
        ),
        label=e.label,
        weights=[(w.segment, w.weight) for w in e.weights],
        top_segments=list(e.top_segments),
        seed=e.seed,
        num_samples=e.num_samples,
        # The surrogate's R² is absent when undefined (one sample): NaN here, null in JSON.
        score=e.score if e.HasField("score") else math.nan,
        pictures={_PICTURE_NAMES[p.kind]: p.png for p in e.pictures},
        # A figure the server did not have (R² of one sample, stability under 20) is left out.
        quality={
            name: getattr(q, name)
            for name in _QUALITY
            if name not in ("r2", "stability") or q.HasField(name)  # type: ignore[arg-type]
        },
        no_evidence=q.evidence == pb.EVIDENCE_NONE,
        stopped_early=e.stopped_early,
        warnings=list(e.warnings),
    )


def model_info_request(spec: pb.ModelSpec) -> pb.GetModelInfoRequest:
    """A GetModelInfo request."""
    return pb.GetModelInfoRequest(model_spec=spec)


def model_description(response: pb.GetModelInfoResponse) -> r.ModelDescription:
    """The result of a GetModelInfo call."""
    return r.ModelDescription(
        name=response.model.name,
        version=response.model.version,
        class_names=list(response.class_names),
        input_size=(response.input_height, response.input_width),
        card=json.loads(response.model_card_json or "{}"),
        normal_class_names=list(response.normal_class_names),
        available_versions=list(response.available_versions),
    )
