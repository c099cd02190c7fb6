"""The SDK's domain gate and prediction sets: fields read as sent, None where absent, alpha sent, no NaN."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from allxai.client import AsyncClient, ClassifyResult, Client, ExplainResult, SpecimenResult
from allxai.client import _messages as m
from allxai.client._specimen import SpecimenBatches
from allxai.v1 import diagnosis_pb2 as pb
from tests.client.fake_gateway import THRESHOLD, FakeServicer, classification, fake_gateway, summary


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeServicer]]:
    with fake_gateway() as running:
        yield running


def _response(c: pb.Classification) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(classification=c, model=pb.ModelRef(name="m", version=1), request_id="r")


def test_a_classification_outside_the_domain_reads_as_sent() -> None:
    result = m.classify_result(_response(classification(b"ood", 0.0)))
    assert result.in_domain is False and result.domain_checked and result.out_of_domain
    # float32 on the wire, the decimal that was meant in the result.
    assert (result.domain_score, result.domain_threshold) == (41.2, THRESHOLD)
    assert result.prediction_set == ["Pro", "Pre"] and result.ambiguous
    assert result.coverage == 0.95
    record = result.to_dict()
    assert record["in_domain"] is False and record["prediction_set"] == ["Pro", "Pre"]
    assert record["coverage"] == 0.95 and record["domain_score"] == 41.2


def test_a_model_without_a_check_or_calibration_gives_none_not_defaults() -> None:
    result = m.classify_result(_response(classification(b"nocheck", 0.0)))
    assert result.in_domain is None and not result.domain_checked and not result.out_of_domain
    assert result.domain_score is None and result.domain_threshold is None and result.coverage is None
    assert result.prediction_set == [] and not result.ambiguous
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert '"in_domain": null' in text and '"coverage": null' in text and '"prediction_set": []' in text
    # A result made by hand (an older caller) has the same defaults.
    plain = ClassifyResult("Pro", 0.9, {"Pro": 0.9}, "m", 1, "r")
    assert (plain.in_domain, plain.prediction_set, plain.coverage) == (None, [], None)


def test_no_nan_reaches_json() -> None:
    c = classification(b"nan", 0.0)
    c.confidence = math.nan
    c.scores[0].score = math.inf
    result = m.classify_result(_response(c))
    assert result.in_domain is True and result.domain_score is None  # a NaN score is no number
    record = result.to_dict()
    assert record["confidence"] is None and record["scores"]["Benign"] is None
    json.dumps(record, allow_nan=False)
    explained = ExplainResult(result, "Pro", [(1, math.nan)], [1], 1, 10, math.nan, quality={"r2": math.nan})
    assert json.loads(json.dumps(explained.to_dict(), allow_nan=False))["quality"] == {"r2": None}
    specimen = SpecimenResult([result], {"Pro": 1}, math.nan, [0])
    assert json.loads(json.dumps(specimen.to_dict(), allow_nan=False))["blast_fraction"] is None


@pytest.mark.parametrize("alpha", [0, 0.0, 1, 1.5, -0.05, math.nan, math.inf, True])
def test_alpha_must_be_a_level_between_0_and_1(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be a level between 0 and 1"):
        m.classify_request(b"x", None, pb.ModelSpec(), "", alpha)
    with pytest.raises(ValueError, match="alpha"):
        m.explain_request(b"x", pb.ModelSpec(), {"alpha": alpha})
    with pytest.raises(ValueError, match="alpha"):
        SpecimenBatches([b"x"], pb.ModelSpec(), "", 1, 100, alpha=alpha)


def test_alpha_goes_on_every_request() -> None:
    assert m.classify_request(b"x", None, pb.ModelSpec(), "").alpha == 0.0  # the server's default
    assert m.classify_request(b"x", None, pb.ModelSpec(), "", 0.1).alpha == pytest.approx(0.1)
    assert m.explain_request(b"x", pb.ModelSpec(), {"alpha": 0.2}).request.alpha == pytest.approx(0.2)
    assert m.explain_request(b"x", pb.ModelSpec(), {}).request.alpha == 0.0
    batches = SpecimenBatches([b"a", b"b", b"c"], pb.ModelSpec(), "S", 2, 100, alpha=0.1)
    alphas = []
    for request in batches:
        alphas.append(request.alpha)
        batches.add(pb.ClassifySpecimenResponse(model=pb.ModelRef(name="m", version=1)))
    assert alphas == pytest.approx([0.1, 0.1])


def _specimen(images: list[bytes], batch_size: int) -> SpecimenResult:
    batches = SpecimenBatches(images, pb.ModelSpec(), "S", batch_size, 10_000, alpha=0.1)
    for request in batches:
        cells = [classification(image.data, request.alpha) for image in request.images]
        batches.add(
            pb.ClassifySpecimenResponse(
                cells=[pb.CellResult(image_id=f"c{i}", classification=c) for i, c in enumerate(cells)],
                summary=summary(cells),
                model=pb.ModelRef(name="m", version=1),
            )
        )
    return batches.result()


def test_a_specimen_in_batches_counts_only_cells_inside_the_domain() -> None:
    # Five cells: two outside the domain (their blast labels not counted; their sets hold two classes),
    # one ambiguous inside it, two plainly inside.
    images = [b"in-1", b"ood-1", b"amb-1", b"ood-2", b"in-2"]
    whole, batched = _specimen(images, 5), _specimen(images, 2)
    for result in (whole, batched):
        assert (result.out_of_domain, result.ambiguous, result.counted) == (2, 3, 3)
        assert result.blast_fraction == pytest.approx(1.0)  # Pro, Pre, Pro: all blasts; the OOD ones left out
        assert result.counts == {"Benign": 0, "Early": 0, "Pre": 1, "Pro": 4}
        assert [c.in_domain for c in result.cells] == [True, False, True, False, True]
        assert result.cells[2].prediction_set == ["Pre", "Pro"]
        assert [c.coverage for c in result.cells] == [0.9] * 5
        # Outside the domain first, then the least confident, across batches as in one call.
        assert result.review_first == [1, 3, 2, 0, 4]
    # 2 of 5 is within the limit, and so is each batch (one of two at most).
    assert not whole.needs_review and not batched.needs_review and whole.review_reason == ""
    # A batch of two cells outside the domain is over it; the reason names the batch's cells.
    flagged = _specimen([b"in-1", b"amb-1", b"ood-1", b"ood-2", b"in-2"], 2)
    assert flagged.needs_review
    assert flagged.review_reason == "cells 3-4: 2 of 2 cells lie outside the training domain"
    alone = _specimen([b"ood-1", b"ood-2", b"in"], 5)
    assert alone.needs_review and alone.review_reason == "2 of 3 cells lie outside the training domain"
    data = alone.to_dict()
    assert (data["needs_review"], data["counted"], data["out_of_domain"]) == (True, 1, 2)


def test_a_specimen_without_a_check_counts_every_cell_even_from_an_older_gateway() -> None:
    result = _specimen([b"nocheck-1", b"nocheck-2", b"nocheck-3"], 2)
    assert result.counted == 3 and result.blast_fraction == 1.0 and not result.needs_review
    # A gateway from before the fields: counted 0, no cell checked: every cell counts.
    batches = SpecimenBatches([b"a", b"b"], pb.ModelSpec(), "", 5, 100)
    for _ in batches:
        cells = [classification(b"nocheck", 0), classification(b"nocheck", 0)]
        old = summary(cells)
        old.ClearField("counted")
        batches.add(
            pb.ClassifySpecimenResponse(
                cells=[pb.CellResult(classification=c) for c in cells],
                summary=old,
                model=pb.ModelRef(name="m", version=1),
            )
        )
    assert batches.result().counted == 2 and batches.result().blast_fraction == 1.0
    # A made-by-hand result without ``counted`` counts every cell too.
    assert SpecimenResult([], {}, 0.0, []).counted_cells == 0
    cell = m.classify_result(_response(classification(b"in", 0)))
    assert SpecimenResult([cell, cell], {}, 0.5, [0, 1]).counted_cells == 2


def test_a_specimen_where_no_cell_could_be_judged_needs_review_even_unflagged() -> None:
    batches = SpecimenBatches([b"a"], pb.ModelSpec(), "", 5, 100)
    for _ in batches:
        cells = [classification(b"ood", 0)]
        quiet = summary(cells)
        quiet.needs_review, quiet.review_reason = False, ""
        batches.add(
            pb.ClassifySpecimenResponse(
                cells=[pb.CellResult(classification=c) for c in cells],
                summary=quiet,
                model=pb.ModelRef(name="m", version=1),
            )
        )
    result = batches.result()
    assert result.counted == 0 and result.blast_fraction == 0.0 and result.needs_review
    assert "no cell could be judged" in result.review_reason


def test_the_sync_client_sends_alpha_and_reads_the_new_fields(fake: tuple[str, FakeServicer]) -> None:
    target, servicer = fake
    with Client(target, specimen_batch_size=2) as client:
        assert client.model_info().alphas == [0.05, 0.1, 0.2]
        result = client.classify(b"ood", alpha=0.1)
        assert servicer.requests[-1].alpha == pytest.approx(0.1)
        assert (
            result.in_domain is False and result.coverage == 0.9 and result.prediction_set == ["Pro", "Pre"]
        )
        assert client.classify(b"in").coverage == 0.95 and servicer.requests[-1].alpha == 0.0
        specimen = client.classify_specimen([b"in", b"ood", b"amb"], "S", alpha=0.2)
        assert [r.alpha for r in servicer.requests[-2:]] == pytest.approx([0.2, 0.2])
        assert (specimen.out_of_domain, specimen.ambiguous, specimen.counted) == (1, 2, 2)
        explained = client.explain(b"ood", alpha=0.05, seed=3)
        assert servicer.requests[-1].request.alpha == pytest.approx(0.05)
        assert explained.classification.in_domain is False
        assert explained.warnings and "outside the model's training domain" in explained.warnings[0]
        assert explained.to_dict()["warnings"] == explained.warnings
        assert client.explain(b"in").warnings == []
        with pytest.raises(ValueError, match="alpha"):
            client.classify(b"in", alpha=0)


async def test_the_async_client_sends_alpha_and_reads_the_new_fields(fake: tuple[str, FakeServicer]) -> None:
    target, servicer = fake
    async with AsyncClient(target, specimen_batch_size=2) as client:
        result = await client.classify(b"amb", alpha=0.1)
        assert servicer.requests[-1].alpha == pytest.approx(0.1)
        assert result.prediction_set == ["Pre", "Pro"] and result.domain_score == 7.25
        specimen = await client.classify_specimen([b"ood", b"ood", b"nocheck"], alpha=0.2)
        assert specimen.needs_review and specimen.review_reason.startswith("cells 1-2: 2 of 2 cells")
        assert specimen.counted == 1 and specimen.cells[2].in_domain is None
        explained = await client.explain(b"ood", alpha=0.2)
        assert servicer.requests[-1].request.alpha == pytest.approx(0.2) and explained.warnings
        with pytest.raises(ValueError, match="alpha"):
            await client.classify_specimen([b"in"], alpha=1.0)
