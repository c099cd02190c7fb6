"""A gateway that answers as told, for the clients' handling of the domain gate and the prediction sets.

The real gateway fills these fields only for a model that carries a gate and a calibration; this one fills
them from the image bytes, so every case can be tested without a model:

- ``b"in..."``: inside the training domain, a one-class set at the requested coverage;
- ``b"amb..."``: inside, an ambiguous set of two classes;
- ``b"ood..."``: outside the training domain (score 41.2 > 12.0);
- ``b"nocheck..."``: a model without a domain check or calibration (the optional fields left out);
- ``b"nan..."``: inside, but with a score that is not a number.

Every request is kept in ``requests``, so a test can see the ``alpha`` it carried.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

CLASSES = ["Benign", "Early", "Pre", "Pro"]
NORMAL = ["Benign"]
DISPLAY = {
    "Benign": "Benign (hematogones)",
    "Early": "Early pre-B ALL",
    "Pre": "Pre-B ALL",
    "Pro": "Pro-B ALL",
}
THRESHOLD = 12.0
CARD = {
    "display_names": DISPLAY,
    "domain": {"output": "ood_score", "threshold": THRESHOLD, "acceptance": 0.95},
    "conformal": {"qhat": {"0.05": 0.93, "0.1": 0.88, "0.2": "inf"}, "method": "aps-randomised"},
}
#: The gateway's limit on the share of out-of-domain cells in a specimen.
OUT_OF_DOMAIN_LIMIT = 0.5
EXPLAIN_WARNING = (
    "The image lies outside the model's training domain (score 41.2 > 12.0): the explanation shows what "
    "the model looked at, not a diagnosis."
)


def classification(data: bytes, alpha: float) -> pb.Classification:
    """The answer for one image, as the module docstring says."""
    kind = next((k for k in ("in", "amb", "ood", "nocheck", "nan") if data.startswith(k.encode())), "in")
    probabilities = {
        "in": [0.01, 0.02, 0.02, 0.95],
        "amb": [0.01, 0.03, 0.56, 0.40],
        "ood": [0.0, 0.0, 0.001, 0.999],
        "nocheck": [0.02, 0.01, 0.04, 0.93],
        "nan": [0.01, 0.02, 0.02, 0.95],
    }[kind]
    best = max(range(len(CLASSES)), key=lambda i: probabilities[i])
    c = pb.Classification(
        scores=[pb.ClassScore(label=n, score=p) for n, p in zip(CLASSES, probabilities, strict=True)],
        label=CLASSES[best],
        confidence=probabilities[best],
        label_index=best,
    )
    if kind == "nocheck":
        return c
    score = {"in": 3.5, "amb": 7.25, "ood": 41.2, "nan": math.nan}[kind]
    c.in_domain = kind != "ood"
    c.domain_score = score
    c.domain_threshold = THRESHOLD
    c.coverage = 1 - (alpha or 0.05)
    ranked = sorted(CLASSES, key=lambda n: -probabilities[CLASSES.index(n)])
    c.prediction_set.extend(ranked[:2] if kind in ("amb", "ood") else ranked[:1])
    return c


def summary(cells: list[pb.Classification]) -> pb.SpecimenSummary:
    """The specimen summary the gateway gives: the blast fraction over the cells inside the domain."""
    counts = {n: 0 for n in CLASSES}
    for c in cells:
        counts[c.label] += 1
    checked = [c for c in cells if c.HasField("in_domain")]
    counted = [c for c in cells if not c.HasField("in_domain") or c.in_domain]
    blasts = sum(c.label not in NORMAL for c in counted)
    outside = len(checked) - sum(c.in_domain for c in checked)
    s = pb.SpecimenSummary(
        counts=[pb.ClassCount(label=n, count=k) for n, k in counts.items()],
        blast_fraction=blasts / len(counted) if counted else 0.0,
        # As the gateway orders them: outside the domain first, then the least confident.
        review_first=sorted(
            range(len(cells)),
            key=lambda i: (not cells[i].HasField("in_domain") or cells[i].in_domain, cells[i].confidence),
        ),
        out_of_domain=outside,
        ambiguous=sum(len(c.prediction_set) > 1 for c in cells),
        counted=len(counted),
    )
    if cells and outside / len(cells) > OUT_OF_DOMAIN_LIMIT:
        s.needs_review = True
        s.review_reason = f"{outside} of {len(cells)} cells lie outside the training domain"
    return s


class FakeServicer(pb_grpc.DiagnosisServiceServicer):
    """Answers every call from the image bytes; keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.calls = 0

    def _reply(self) -> tuple[pb.ModelRef, str]:
        self.calls += 1
        return pb.ModelRef(name="allnet", version=2), f"req-{self.calls}"

    def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:  # noqa: N802
        self.requests.append(request)
        model, request_id = self._reply()
        return pb.ClassifyResponse(
            classification=classification(request.image.data, request.alpha),
            model=model,
            request_id=request_id,
            image_id=request.image.image_id,
        )

    def ClassifySpecimen(  # noqa: N802
        self, request: pb.ClassifySpecimenRequest, context: Any
    ) -> pb.ClassifySpecimenResponse:
        self.requests.append(request)
        model, request_id = self._reply()
        cells = [classification(image.data, request.alpha) for image in request.images]
        return pb.ClassifySpecimenResponse(
            cells=[
                pb.CellResult(image_id=i.image_id, classification=c)
                for i, c in zip(request.images, cells, strict=True)
            ],
            summary=summary(cells),
            model=model,
            request_id=request_id,
            specimen_id=request.specimen_id,
        )

    def StreamExplain(  # noqa: N802
        self, request: pb.StreamExplainRequest, context: Any
    ) -> Iterator[pb.StreamExplainResponse]:
        self.requests.append(request)
        inner = request.request
        model, request_id = self._reply()
        c = classification(inner.image.data, inner.alpha)
        warnings = [EXPLAIN_WARNING] if c.HasField("in_domain") and not c.in_domain else []
        yield pb.StreamExplainResponse(progress=pb.ExplainProgress(samples_done=10, samples_total=10))
        explanation = pb.Explanation(
            label=c.label,
            weights=[pb.SuperpixelWeight(segment=3, weight=0.4)],
            top_segments=[3],
            seed=inner.options.seed if inner.options.HasField("seed") else 11,
            num_samples=10,
            num_segments=8,
            score=0.5,
            quality=pb.ExplanationQuality(r2=0.5, stability=0.8, cell_share=0.7, background_share=0.2),
            warnings=warnings,
        )
        kinds = inner.options.pictures or [pb.PICTURE_KIND_OVERLAY]
        explanation.pictures.extend(pb.Picture(kind=k, png=b"\x89PNG fake") for k in kinds)
        yield pb.StreamExplainResponse(
            result=pb.ExplainResponse(
                classification=c,
                explanation=explanation,
                model=model,
                request_id=request_id,
                image_id=inner.image.image_id,
            )
        )

    def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: Any
    ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(
            model=pb.ModelRef(name="allnet", version=2),
            class_names=CLASSES,
            normal_class_names=NORMAL,
            input_height=48,
            input_width=48,
            model_card_json=json.dumps(CARD),
            available_versions=[2],
        )


@contextmanager
def fake_gateway() -> Iterator[tuple[str, FakeServicer]]:
    """A fake gateway on a free local port: its target and its servicer."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = FakeServicer()
    pb_grpc.add_DiagnosisServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)
