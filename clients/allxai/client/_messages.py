"""The one place that builds requests and reads responses, for both clients."""

from __future__ import annotations

import heapq
import itertools
import json
import math
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc

from allxai.client import _results as r
from allxai.v1 import diagnosis_pb2 as pb

_PICTURE_NAMES = {kind: name for name, kind in r.PICTURE_KINDS.items()}


def client_error(exc: grpc.RpcError, image_offset: int = 0) -> r.AllxaiClientError:
    """The error a failed call raises; ``image_offset`` renumbers ``images[i]`` for a batched specimen."""
    details = exc.details() or ""
    match = r.IMAGE_FIELD.match(details)
    if match and image_offset:
        details = f"images[{int(match.group(1)) + image_offset}]{details[match.end() :]}"
    return r.AllxaiClientError(exc.code().name, details)


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


def _classify_result(
    c: pb.Classification, model: pb.ModelRef, request_id: str, image_id: str
) -> r.ClassifyResult:
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
    )


def classify_result(response: pb.ClassifyResponse) -> r.ClassifyResult:
    """The result of a Classify call."""
    return _classify_result(response.classification, response.model, response.request_id, response.image_id)


def _review_key(cell: r.ClassifyResult) -> tuple[bool, float]:
    """Where a cell stands in the review order: outside the training domain first, then least confident."""
    return (cell.in_domain is not False, cell.confidence)


class SpecimenBatches:
    """Splits a specimen into ClassifySpecimen requests and joins their answers into one result.

    A batch holds at most ``batch_size`` images and about ``max_bytes`` of image data, since the gateway
    limits both. Images are read (paths) and batched lazily: only the batch in flight (and the image
    that opens the next) is in memory, not the whole specimen (2,000 BMPs are over a gigabyte). Every
    batch after the first asks for the exact model version that answered the first, so a model rolled
    out mid-specimen cannot split one summary across two models.
    Iterate for the requests; hand each response to :meth:`add` before taking the next request.
    """

    def __init__(
        self,
        images: Iterable[r.ImageInput],
        spec: pb.ModelSpec,
        specimen_id: str,
        batch_size: int,
        max_bytes: int,
        image_ids: Iterable[str] | None = None,
        alpha: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._alpha = check_alpha(alpha)
        self._images = iter(images)
        self._ids: Iterator[str | None] = iter(image_ids) if image_ids is not None else itertools.repeat(None)
        self._batch_size = batch_size
        self._max_bytes = max_bytes
        self._spec = spec
        self._specimen_id = specimen_id
        self._responses: list[pb.ClassifySpecimenResponse] = []
        #: Index of the first image of the batch in flight, for errors that name an image.
        self.offset = 0

    def _batches(self) -> Iterator[list[pb.Image]]:
        batch: list[pb.Image] = []
        size = 0
        for image in self._images:
            message = image_message(image, next(self._ids, None))
            if batch and (len(batch) >= self._batch_size or size + len(message.data) > self._max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(message)
            size += len(message.data)
        # The last batch is never empty, unless the whole specimen is: that still makes one call, so the
        # gateway's own answer (INVALID_ARGUMENT) says what it means.
        yield batch

    def __iter__(self) -> Iterator[pb.ClassifySpecimenRequest]:
        for batch in self._batches():
            yield pb.ClassifySpecimenRequest(
                images=batch, model_spec=self._spec, specimen_id=self._specimen_id, alpha=self._alpha
            )
            self.offset += len(batch)

    def add(self, response: pb.ClassifySpecimenResponse) -> None:
        """Take the answer to the request just yielded."""
        if not self._responses:
            self._spec = pb.ModelSpec(name=response.model.name, version=response.model.version)
        self._responses.append(response)

    def result(self) -> r.SpecimenResult:
        """All batches' cells in order, with the counts, blast fraction and review order of them all.

        The blast fraction of the whole is over the cells every batch counted (those inside the training
        domain); the specimen needs review when any batch did, or when no cell at all could be counted.
        """
        cells: list[r.ClassifyResult] = []
        counts: dict[str, int] = {}
        blasts = counted = out_of_domain = ambiguous = 0
        reasons: list[tuple[int, int, str]] = []
        orders: list[list[tuple[tuple[bool, float], int]]] = []
        for response in self._responses:
            offset = len(cells)
            cells += [
                _classify_result(c.classification, response.model, response.request_id, c.image_id)
                for c in response.cells
            ]
            summary = response.summary
            for count in summary.counts:
                counts[count.label] = counts.get(count.label, 0) + count.count
            batch_counted = summary.counted
            if not batch_counted and not any(c.classification.HasField("in_domain") for c in response.cells):
                # No domain check, so every cell counts; a gateway from before the field leaves it 0.
                batch_counted = len(response.cells)
            # The fraction came from an integer count of this batch's counted cells; round() recovers it.
            blasts += round(summary.blast_fraction * batch_counted)
            counted += batch_counted
            out_of_domain += summary.out_of_domain
            ambiguous += summary.ambiguous
            if summary.needs_review:
                reason = summary.review_reason or "the gateway asks for a review"
                reasons.append((offset + 1, len(cells), reason))
            # The gateway's order: cells outside the domain first, then the least confident.
            orders.append([(_review_key(cells[offset + i]), offset + i) for i in summary.review_first])
        if len(self._responses) > 1:
            # Each batch's reason speaks of its own cells: say which.
            review_reason = "; ".join(f"cells {first}-{last}: {why}" for first, last, why in reasons)
        else:
            review_reason = "; ".join(why for _, _, why in reasons)
        if cells and not counted and not reasons:
            review_reason = "no cell could be judged: none lies inside the training domain"
        return r.SpecimenResult(
            cells=cells,
            counts=counts,
            blast_fraction=blasts / counted if counted else 0.0,
            review_first=[index for _, index in heapq.merge(*orders)],
            specimen_id=self._specimen_id,
            out_of_domain=out_of_domain,
            ambiguous=ambiguous,
            counted=counted,
            needs_review=bool(review_reason),
            review_reason=review_reason,
        )


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
        classification=_classify_result(
            response.classification, response.model, response.request_id, response.image_id
        ),
        label=e.label,
        weights=[(w.segment, w.weight) for w in e.weights],
        top_segments=list(e.top_segments),
        seed=e.seed,
        num_samples=e.num_samples,
        score=e.score,
        pictures={_PICTURE_NAMES[p.kind]: p.png for p in e.pictures},
        quality={
            "r2": q.r2,
            "local_prediction": q.local_prediction,
            "model_prediction": q.model_prediction,
            "stability": q.stability,
            "cell_share": q.cell_share,
            "background_share": q.background_share,
            "corner_share": q.corner_share,
        },
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
