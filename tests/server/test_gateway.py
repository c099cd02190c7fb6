"""Integration tests: the real grpc.aio gateway on a free port, the real SavedModel, real gRPC."""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import INPUT_SIZE, RunningGateway
from tests.support.images import huge_png
from tests.support.status import bad_request


@pytest.fixture
def stub(gateway: RunningGateway) -> Iterator[pb_grpc.DiagnosisServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.DiagnosisServiceStub(channel)


def test_health_reports_serving(gateway: RunningGateway) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "allxai.v1.DiagnosisService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_classify(stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes) -> None:
    reply = stub.Classify(
        pb.ClassifyRequest(
            image=pb.Image(data=cell_png, image_id="cell-7"), request_id="r-1", specimen_id="S-42"
        ),
        timeout=30,
    )
    scores = [s.score for s in reply.classification.scores]
    assert [s.label for s in reply.classification.scores] == ["Benign", "Early", "Pre", "Pro"]
    assert sum(scores) == pytest.approx(1.0, abs=1e-4)
    assert reply.classification.label_index == int(np.argmax(scores))
    assert reply.classification.label == reply.classification.scores[reply.classification.label_index].label
    assert reply.classification.confidence == pytest.approx(max(scores))
    assert (reply.model.name, reply.model.version) == ("allnet", 1)
    assert (reply.request_id, reply.specimen_id, reply.image_id) == ("r-1", "S-42", "cell-7")
    assert reply.timings.total.ToTimedelta().total_seconds() > 0


def test_classify_real_cnmc_cell(stub: pb_grpc.DiagnosisServiceStub, shared_data) -> None:  # type: ignore[no-untyped-def]
    bmp = next((shared_data / "cnmc-sample" / "hem").glob("*.bmp")).read_bytes()
    reply = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=bmp)), timeout=30)
    assert len(reply.classification.scores) == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no image bytes"),
        (b"\x89PNG\r\n\x1a\n garbage", "corrupt or truncated"),
        (huge_png(10_000, 10_000), "10000x10000 = 100000000 pixels; the limit is 40000000"),
    ],
    ids=["empty", "corrupt", "10000x10000"],
)
def test_bad_images_get_invalid_argument_and_the_server_goes_on(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes, data: bytes, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(image=pb.Image(data=data)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert message in bad_request(info.value)["image.data"]
    assert stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png)), timeout=30).classification.label


def test_empty_request(stub: pb_grpc.DiagnosisServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "image.data: the request carries no image bytes"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (pb.ModelSpec(name="nope"), "model 'nope' is not served here"),
        (pb.ModelSpec(version=7), "version 7 of model 'allnet' is not loaded (loaded: 1)"),
        (pb.ModelSpec(version_label="canary"), "has no version label 'canary'"),
    ],
)
def test_unknown_models_get_not_found(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes, spec: pb.ModelSpec, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png), model_spec=spec), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert message in info.value.details()


def test_get_model_info(stub: pb_grpc.DiagnosisServiceStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert list(info.class_names) == ["Benign", "Early", "Pre", "Pro"]
    assert list(info.normal_class_names) == ["Benign"]
    assert (info.input_height, info.input_width) == (INPUT_SIZE, INPUT_SIZE)
    assert info.has_composition_signature
    assert list(info.available_versions) == [1]
    assert '"architecture": "allnet"' in info.model_card_json


def test_classify_specimen(stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes) -> None:
    images = [pb.Image(data=cell_png, image_id=f"c{i}") for i in range(5)]
    reply = stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images, specimen_id="S-1"), timeout=30)
    assert [c.image_id for c in reply.cells] == [f"c{i}" for i in range(5)]
    counts = {c.label: c.count for c in reply.summary.counts}
    assert sum(counts.values()) == 5
    assert reply.summary.blast_fraction == pytest.approx(1 - counts["Benign"] / 5)
    assert sorted(reply.summary.review_first) == list(range(5))


def test_classify_specimen_names_the_bad_image(stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes) -> None:
    images = [pb.Image(data=cell_png), pb.Image(data=cell_png), pb.Image(data=b"junk")]
    with pytest.raises(grpc.RpcError) as info:
        stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[2].data" in bad_request(info.value)


def explain_request(
    cell_png: bytes, seed: int | None, samples: int = 200, **options: object
) -> pb.ExplainRequest:
    opts = pb.ExplainOptions(num_samples=samples, **options)  # type: ignore[arg-type]
    if seed is not None:
        opts.seed = seed
    return pb.ExplainRequest(image=pb.Image(data=cell_png), options=opts)


def test_explain_is_reproducible_and_draws(stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes) -> None:
    kinds = [pb.PICTURE_KIND_OVERLAY, pb.PICTURE_KIND_MASK, pb.PICTURE_KIND_HEATMAP, pb.PICTURE_KIND_FIGURE]
    first = stub.Explain(explain_request(cell_png, seed=11, pictures=kinds), timeout=60)
    second = stub.Explain(explain_request(cell_png, seed=11), timeout=60)
    e = first.explanation
    assert e.seed == 11 and e.num_samples == 200 and e.num_segments >= 1
    assert list(e.weights) == list(second.explanation.weights)
    assert 1 <= len(e.top_segments) <= 5
    assert e.label == first.classification.label
    assert [p.kind for p in e.pictures] == kinds
    for picture in e.pictures[:2]:
        assert Image.open(io.BytesIO(picture.png)).size == (INPUT_SIZE, INPUT_SIZE)
    # The heatmap is filed on its own: enlarged by whole pixels, with its legend strip under the map.
    width, height = Image.open(io.BytesIO(e.pictures[2].png)).size
    assert width % INPUT_SIZE == 0 and height > width
    assert Image.open(io.BytesIO(e.pictures[3].png)).format == "PNG"


def test_explain_draws_a_seed_when_none_is_given(stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes) -> None:
    reply = stub.Explain(explain_request(cell_png, seed=None, samples=50), timeout=60)
    again = stub.Explain(explain_request(cell_png, seed=reply.explanation.seed, samples=50), timeout=60)
    assert list(again.explanation.weights) == list(reply.explanation.weights)


@pytest.mark.parametrize(
    ("request_options", "field"),
    [({"samples": 1_000_000}, "options.num_samples"), ({"target_label": "Nope"}, "options.target_label")],
)
def test_explain_refuses_bad_options(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes, request_options: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(explain_request(cell_png, seed=1, **request_options), timeout=60)  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request(info.value)


def test_stream_explain_reports_progress_then_the_result(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    events = list(
        stub.StreamExplain(
            pb.StreamExplainRequest(request=explain_request(cell_png, seed=3, samples=300, batch_size=50)),
            timeout=60,
        )
    )
    progress = [e.progress for e in events if e.HasField("progress")]
    assert events[-1].HasField("result")
    assert [p.samples_done for p in progress] == sorted(p.samples_done for p in progress)
    assert progress[-1].samples_done == progress[-1].samples_total == 300
    assert events[-1].result.explanation.seed == 3


def test_reflection_lists_the_service(gateway: RunningGateway) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(gateway.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "allxai.v1.DiagnosisService" in services
    assert "grpc.health.v1.Health" in services


def test_a_passed_deadline_stops_the_explanation_and_frees_its_slot(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    for _ in range(6):  # more than the gateway's 4 explanation slots: each must be given back
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(explain_request(cell_png, seed=1, samples=10_000), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = stub.Explain(explain_request(cell_png, seed=1, samples=50), timeout=60)
    assert reply.explanation.num_samples == 50


def test_explain_returns_quality_and_both_compositions_agree(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    by_model = stub.Explain(explain_request(cell_png, seed=8, composition=pb.COMPOSITION_MODEL), timeout=60)
    by_gateway = stub.Explain(
        explain_request(cell_png, seed=8, composition=pb.COMPOSITION_GATEWAY), timeout=60
    )
    assert by_model.explanation.composition == pb.COMPOSITION_MODEL
    assert by_gateway.explanation.composition == pb.COMPOSITION_GATEWAY
    model_weights = {w.segment: w.weight for w in by_model.explanation.weights}
    for w in by_gateway.explanation.weights:
        assert w.weight == pytest.approx(model_weights[w.segment], abs=1e-5)
    q = by_model.explanation.quality
    assert 0.0 <= q.stability <= 1.0
    assert q.cell_share + q.background_share + q.corner_share == pytest.approx(1.0, abs=1e-6) or (
        q.cell_share == q.background_share == q.corner_share == 0.0
    )
    assert q.model_prediction == pytest.approx(by_model.classification.confidence, abs=1e-6)


def test_positive_only_is_the_default_and_false_ranks_by_size(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    # A client that leaves positive_only out (the LIS adapter, grpcurl) gets lime's default: true.
    unset = stub.Explain(explain_request(cell_png, seed=5, top_k=20), timeout=60).explanation
    both = stub.Explain(
        explain_request(cell_png, seed=5, top_k=20, positive_only=False), timeout=60
    ).explanation
    assert list(both.weights) == list(unset.weights)  # the same fit; only the choice differs
    weights = {w.segment: w.weight for w in unset.weights}
    assert unset.top_segments and all(weights[s] > 0 for s in unset.top_segments)
    # With false every superpixel may be chosen, strongest |weight| first, against the label too.
    by_size = sorted(weights, key=lambda s: -abs(weights[s]))[:20]
    assert list(both.top_segments) == by_size
    assert any(weights[s] < 0 for s in both.top_segments) == any(w < 0 for w in weights.values())


def test_explain_adaptive_and_other_segmentations(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    adaptive = stub.Explain(explain_request(cell_png, seed=2, samples=1000, adaptive=True), timeout=60)
    assert adaptive.explanation.num_samples <= 1000
    assert adaptive.explanation.stopped_early == (adaptive.explanation.num_samples < 1000)
    slic = stub.Explain(
        explain_request(
            cell_png, seed=2, segmentation=pb.SEGMENTATION_SLIC, segmentation_params={"n_segments": 12.0}
        ),
        timeout=60,
    )
    assert 1 <= slic.explanation.num_segments <= 30


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"hide_color": [1, 2]}, "options.hide_color"),
        ({"hide_color": [0, 0, 999]}, "options.hide_color"),
        ({"segmentation_params": {"n_segments": 3.0}}, "options.segmentation_params"),
        ({"seed": -1}, "options.seed"),
        # Values out of range or not finite are refused before any work, in words.
        ({"segmentation_params": {"kernel_size": -1.0}}, "options.segmentation_params"),
        ({"segmentation_params": {"max_dist": float("inf")}}, "options.segmentation_params"),
        (
            {"segmentation": pb.SEGMENTATION_SLIC, "segmentation_params": {"n_segments": 0.0}},
            "options.segmentation_params",
        ),
        (
            {"segmentation": pb.SEGMENTATION_SLIC, "segmentation_params": {"n_segments": 12.7}},
            "options.segmentation_params",
        ),
        (
            {"segmentation": pb.SEGMENTATION_SLIC, "segmentation_params": {"start_label": 5.0}},
            "options.segmentation_params",
        ),
        (
            {"segmentation": pb.SEGMENTATION_FELZENSZWALB, "segmentation_params": {"sigma": -1.0}},
            "options.segmentation_params",
        ),
        # One superpixel per pixel would make masks of samples x pixels: over the superpixel limit.
        ({"segmentation_params": {"max_dist": 0.001}}, "options.segmentation_params"),
        # One superpixel: nothing to compare.
        ({"segmentation_params": {"kernel_size": 60.0, "max_dist": 1e5}}, "options.segmentation_params"),
        ({"num_features": -1}, "options.num_features"),
        ({"batch_size": 100_000}, "options.batch_size"),
    ],
)
def test_explain_refuses_bad_segmentation_and_colours(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes, options: dict[str, object], field: str
) -> None:
    seed = options.pop("seed", 1)
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(explain_request(cell_png, seed=seed, **options), timeout=60)  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request(info.value)
