"""StreamExplain's progress through the real gateway: the total at once, then a report after every batch."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway


@pytest.fixture
def stub(gateway: RunningGateway) -> Iterator[pb_grpc.DiagnosisServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.DiagnosisServiceStub(channel)


@pytest.mark.parametrize(
    ("composition", "samples", "reports"),
    [
        # The gateway builds the images: a report per prediction batch (64), 7 for 400 samples.
        (pb.COMPOSITION_GATEWAY, 400, 7),
        # The model builds them (the test model has a compose signature): a report per compose request
        # of explain_compose_batch_size (64) masks, 7 for 400 samples and 16 for lime's 1,000.
        (pb.COMPOSITION_MODEL, 400, 7),
        (pb.COMPOSITION_MODEL, 1000, 16),
    ],
    ids=["gateway-400", "model-400", "model-1000"],
)
def test_the_total_comes_first_then_a_report_after_every_batch(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes, composition: int, samples: int, reports: int
) -> None:
    options = pb.ExplainOptions(num_samples=samples, seed=4, composition=composition)  # type: ignore[arg-type]
    request = pb.StreamExplainRequest(
        request=pb.ExplainRequest(image=pb.Image(data=cell_png), options=options)
    )
    events = list(stub.StreamExplain(request, timeout=120))

    assert events[-1].HasField("result") and not any(e.HasField("result") for e in events[:-1])
    assert events[-1].result.explanation.composition == composition
    progress = [(e.progress.samples_done, e.progress.samples_total) for e in events[:-1]]
    assert progress[0] == (0, samples)  # before any model work: the client's bar has its length at once
    assert {total for _, total in progress} == {samples}
    done = [d for d, _ in progress]
    assert done == sorted(set(done)), done  # strictly increasing
    assert done[-1] == samples
    assert len(progress) == 1 + reports, done
