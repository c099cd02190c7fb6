"""The domain gate and the prediction sets through the real gateway, over the session's real export.

The session model (a tiny ALL-Net on synthetic cells, see tests/conftest.py) was calibrated at export like any
``allxai train`` run: its ``serving_default`` returns a domain score and its card the threshold and the
conformal levels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import INPUT_SIZE, RunningGateway, png_bytes
from tests.support.client import gateway_server
from tests.support.status import bad_request

#: Not a blood cell: blank, flat grey, black, a colour, noise.
NON_CELLS = {
    "blank white": np.full((INPUT_SIZE, INPUT_SIZE, 3), 255, np.uint8),
    "flat grey": np.full((INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8),
    "black": np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8),
    "flat green": np.tile(np.array([30, 200, 40], np.uint8), (INPUT_SIZE, INPUT_SIZE, 1)),
    "noise": np.random.default_rng(0).integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8),
}


@pytest.fixture
def stub(gateway: RunningGateway) -> Iterator[pb_grpc.DiagnosisServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.DiagnosisServiceStub(channel)


def _classify(stub: pb_grpc.DiagnosisServiceStub, data: bytes, alpha: float = 0) -> pb.Classification:
    request = pb.ClassifyRequest(image=pb.Image(data=data), alpha=alpha)
    return stub.Classify(request, timeout=60).classification


def test_the_card_carries_the_gate_and_the_conformal_levels(stub: pb_grpc.DiagnosisServiceStub) -> None:
    card = json.loads(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).model_card_json)
    assert card["domain"]["output"] == "domain_score"
    assert card["domain"]["acceptance"] == 0.975
    assert np.isfinite(card["domain"]["threshold"])
    assert set(card["conformal"]["qhat"]) == {"0.01", "0.05", "0.1", "0.2"}
    assert card["conformal"]["figures"]["test"]["0.05"]["coverage"] >= 0


@pytest.mark.parametrize("name", sorted(NON_CELLS))
def test_images_that_are_not_cells_are_flagged(stub: pb_grpc.DiagnosisServiceStub, name: str) -> None:
    answer = _classify(stub, png_bytes(NON_CELLS[name]))
    assert answer.HasField("in_domain") and not answer.in_domain, name
    assert answer.domain_score > answer.domain_threshold


def test_a_cell_like_the_training_cells_carries_its_check_and_its_set(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    answer = _classify(stub, cell_png)
    assert answer.HasField("in_domain") and answer.HasField("domain_score")
    assert answer.coverage == pytest.approx(0.95)
    assert set(answer.prediction_set) <= {s.label for s in answer.scores}
    # The same image gets the same set (its randomisation is drawn from its bytes), whatever the level.
    assert _classify(stub, cell_png).prediction_set == answer.prediction_set
    loose = _classify(stub, cell_png, alpha=0.2)
    assert loose.coverage == pytest.approx(0.8)
    assert len(loose.prediction_set) <= len(answer.prediction_set)


def test_an_uncalibrated_level_is_refused_naming_alpha(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _classify(stub, cell_png, alpha=0.3)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "alpha 0.3 was not calibrated; choose one of 0.01, 0.05, 0.1, 0.2" in bad_request(info.value)["alpha"]
    )


def test_the_refuse_policy_answers_an_image_outside_the_domain_with_the_reason(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    with gateway_server(gateway, domain_policy="refuse") as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            _classify(stub, png_bytes(NON_CELLS["flat grey"]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "outside the training domain" in (info.value.details() or "")
        request = pb.ExplainRequest(image=pb.Image(data=png_bytes(NON_CELLS["noise"])))
        request.options.num_samples = 50
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The CLI's streaming call too: no explanation, no progress, the same refusal.
        with pytest.raises(grpc.RpcError) as info:
            list(stub.StreamExplain(pb.StreamExplainRequest(request=request), timeout=60))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        images = [pb.Image(data=png_bytes(NON_CELLS["flat grey"]))]
        reply = stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images), timeout=60)
        # A specimen is answered, its cells outside the domain left out of the blast fraction.
        assert reply.summary.counted == 0 and reply.summary.needs_review


def test_a_specimen_counts_only_cells_inside_the_domain_and_asks_for_review(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    images = [pb.Image(data=cell_png)] * 3 + [pb.Image(data=png_bytes(a)) for a in NON_CELLS.values()]
    reply = stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images), timeout=60)
    flags = [cell.classification.in_domain for cell in reply.cells]
    summary = reply.summary
    assert summary.out_of_domain == flags.count(False) >= len(NON_CELLS)
    assert summary.counted == len(images) - summary.out_of_domain
    assert summary.ambiguous == sum(len(c.classification.prediction_set) > 1 for c in reply.cells)
    assert summary.needs_review and "outside the model's training domain" in summary.review_reason
    assert sum(c.count for c in summary.counts) == len(images)
    # The cells outside come first in the review list.
    outside = {i for i, flag in enumerate(flags) if not flag}
    assert set(summary.review_first[: len(outside)]) == outside


def test_an_explanation_of_an_image_outside_the_domain_still_explains_but_says_so(
    stub: pb_grpc.DiagnosisServiceStub,
) -> None:
    request = pb.ExplainRequest(image=pb.Image(data=png_bytes(NON_CELLS["noise"])))
    request.options.num_samples = 60
    reply = stub.Explain(request, timeout=120)
    assert not reply.classification.in_domain
    assert reply.explanation.num_samples == 60
    assert any("outside the model's training domain" in w for w in reply.explanation.warnings)


def test_drift_shows_in_the_metrics(gateway: RunningGateway, stub: pb_grpc.DiagnosisServiceStub) -> None:
    _classify(stub, png_bytes(NON_CELLS["black"]))
    text = gateway.gateway.metrics.text()  # type: ignore[attr-defined]
    assert 'allxai_domain_score_count{model="allnet",version="1"}' in text
    assert 'allxai_out_of_domain_total{model="allnet",version="1"}' in text
