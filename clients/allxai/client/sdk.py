"""A synchronous client for allxai.v1.DiagnosisService with typed results."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

#: Messages both ways may be this large (gRPC's default of 4 MiB is too small for large images).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

PICTURE_KINDS = {
    "overlay": pb.PICTURE_KIND_OVERLAY,
    "mask": pb.PICTURE_KIND_MASK,
    "heatmap": pb.PICTURE_KIND_HEATMAP,
    "figure": pb.PICTURE_KIND_FIGURE,
}


class AllxaiClientError(Exception):
    """A call that failed, with the gRPC status code name and the server's message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClassifyResult:
    """One classified image."""

    label: str
    confidence: float
    scores: dict[str, float]
    model: str
    version: int
    request_id: str
    image_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "image_id": self.image_id,
            "label": self.label,
            "confidence": self.confidence,
            "scores": self.scores,
            "model": self.model,
            "version": self.version,
            "request_id": self.request_id,
        }


@dataclass(frozen=True)
class SpecimenResult:
    """All cells of a specimen, and its summary."""

    cells: list[ClassifyResult]
    counts: dict[str, int]
    blast_fraction: float
    review_first: list[int]


@dataclass(frozen=True)
class ExplainResult:
    """A classification with its LIME explanation and pictures (PNG bytes by kind)."""

    classification: ClassifyResult
    label: str
    weights: list[tuple[int, float]]
    top_segments: list[int]
    seed: int
    num_samples: int
    score: float
    pictures: dict[str, bytes] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


@dataclass(frozen=True)
class ModelDescription:
    """A served model as GetModelInfo describes it."""

    name: str
    version: int
    class_names: list[str]
    input_size: tuple[int, int]
    card: dict[str, Any]

    def display_name(self, label: str) -> str:
        """The human name of a class, from the model card when it gives one."""
        names = self.card.get("display_names", {})
        return str(names.get(label, label))


def _classify_result(
    c: pb.Classification, model: pb.ModelRef, request_id: str, image_id: str
) -> ClassifyResult:
    return ClassifyResult(
        label=c.label,
        confidence=c.confidence,
        scores={s.label: s.score for s in c.scores},
        model=model.name,
        version=model.version,
        request_id=request_id,
        image_id=image_id,
    )


def _image(image: bytes | str | Path, image_id: str | None = None) -> pb.Image:
    if isinstance(image, bytes):
        return pb.Image(data=image, image_id=image_id or "")
    path = Path(image)
    return pb.Image(data=path.read_bytes(), image_id=image_id if image_id is not None else path.name)


class Client:
    """Calls the gateway at ``target`` (``host:port``); every call has a deadline of ``timeout`` seconds."""

    def __init__(
        self,
        target: str,
        timeout: float = 60.0,
        model: str = "",
        version: int | None = None,
        version_label: str | None = None,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.DiagnosisServiceStub(self._channel)
        self._timeout = timeout
        self._spec = pb.ModelSpec(name=model)
        if version is not None:
            self._spec.version = version
        elif version_label is not None:
            self._spec.version_label = version_label

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., Any], request: Any) -> Any:
        try:
            return fn(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise AllxaiClientError(exc.code().name, exc.details() or "") from exc

    def classify(
        self, image: bytes | str | Path, image_id: str | None = None, specimen_id: str = ""
    ) -> ClassifyResult:
        """Classify one image, given as bytes or a path."""
        request = pb.ClassifyRequest(
            image=_image(image, image_id), model_spec=self._spec, specimen_id=specimen_id
        )
        response: pb.ClassifyResponse = self._call(self._stub.Classify, request)
        return _classify_result(
            response.classification, response.model, response.request_id, response.image_id
        )

    def classify_specimen(
        self, images: Iterable[bytes | str | Path], specimen_id: str = ""
    ) -> SpecimenResult:
        """Classify every cell image of one specimen."""
        request = pb.ClassifySpecimenRequest(
            images=[_image(i) for i in images], model_spec=self._spec, specimen_id=specimen_id
        )
        response: pb.ClassifySpecimenResponse = self._call(self._stub.ClassifySpecimen, request)
        cells = [
            _classify_result(c.classification, response.model, response.request_id, c.image_id)
            for c in response.cells
        ]
        summary = response.summary
        return SpecimenResult(
            cells,
            {c.label: c.count for c in summary.counts},
            summary.blast_fraction,
            list(summary.review_first),
        )

    def explain(
        self,
        image: bytes | str | Path,
        num_samples: int = 0,
        seed: int | None = None,
        top_k: int = 5,
        positive_only: bool = True,
        pictures: Iterable[str] = ("overlay",),
        target_label: str = "",
        progress: Callable[[int, int], None] | None = None,
        adaptive: bool = False,
    ) -> ExplainResult:
        """Explain one image; ``progress(done, total)`` is called as samples are predicted."""
        kinds = []
        for name in pictures:
            if name not in PICTURE_KINDS:
                raise ValueError(f"unknown picture {name!r}; choose from {', '.join(PICTURE_KINDS)}")
            kinds.append(PICTURE_KINDS[name])
        options = pb.ExplainOptions(
            num_samples=num_samples,
            top_k=top_k,
            positive_only=positive_only,
            pictures=kinds,
            target_label=target_label,
            adaptive=adaptive,
        )
        if seed is not None:
            options.seed = seed
        request = pb.ExplainRequest(image=_image(image), model_spec=self._spec, options=options)
        stream = self._stub.StreamExplain(pb.StreamExplainRequest(request=request), timeout=self._timeout)
        response: pb.ExplainResponse | None = None
        try:
            for event in stream:
                if event.HasField("progress") and progress is not None:
                    progress(event.progress.samples_done, event.progress.samples_total)
                elif event.HasField("result"):
                    response = event.result
        except grpc.RpcError as exc:
            raise AllxaiClientError(exc.code().name, exc.details() or "") from exc
        if response is None:
            raise AllxaiClientError("UNKNOWN", "the server closed the stream without a result")
        names = {v: k for k, v in PICTURE_KINDS.items()}
        e = response.explanation
        return ExplainResult(
            classification=_classify_result(
                response.classification, response.model, response.request_id, response.image_id
            ),
            label=e.label,
            weights=[(w.segment, w.weight) for w in e.weights],
            top_segments=list(e.top_segments),
            seed=e.seed,
            num_samples=e.num_samples,
            score=e.score,
            pictures={names[p.kind]: p.png for p in e.pictures},
            quality={
                "r2": e.quality.r2,
                "local_prediction": e.quality.local_prediction,
                "model_prediction": e.quality.model_prediction,
                "stability": e.quality.stability,
                "cell_share": e.quality.cell_share,
                "background_share": e.quality.background_share,
                "corner_share": e.quality.corner_share,
            },
            stopped_early=e.stopped_early,
        )

    def model_info(self) -> ModelDescription:
        """Describe the model this client's calls go to."""
        response: pb.GetModelInfoResponse = self._call(
            self._stub.GetModelInfo, pb.GetModelInfoRequest(model_spec=self._spec)
        )
        return ModelDescription(
            name=response.model.name,
            version=response.model.version,
            class_names=list(response.class_names),
            input_size=(response.input_height, response.input_width),
            card=json.loads(response.model_card_json or "{}"),
        )
