"""A cell-centred model through the real gateway: the same input bytes as in training, and what it reports.

The model (tests/conftest.py ``cell_model_base``) was trained by ``allxai.trainer.train.run`` with
``input = "cell"``: its card carries the crop recipe (field size, margin, stain target, scale range), and
the gateway prepares every request from it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from allxai.contract.card import parse_card
from allxai.server.backends.base import ModelInfo, ModelSpec
from allxai.server.backends.embedded import EmbeddedBackend
from allxai.server.core import Diagnosis
from allxai.server.settings import Settings
from allxai.trainer.datasets import Sample
from allxai.trainer.loading import load_samples
from allxai.trainer.synthetic import make_cell_image
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import CELL_FIELD, CELL_INPUT, GatewayThread, gateway_settings, png_bytes


class Recording:
    """The real embedded backend, keeping every batch of inputs the gateway sends it."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        self.backend = backend
        self.inputs: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    async def predict(self, model: ModelInfo, images: np.ndarray, *args: Any) -> np.ndarray:
        self.inputs.append(images.copy())
        return await self.backend.predict(model, images, *args)


def _field(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"field-{seed}.png"
    path.write_bytes(png_bytes(make_cell_image(seed % 4, CELL_FIELD, np.random.default_rng(seed))))
    return path


def test_training_and_serving_give_the_same_input_bytes(
    cell_model_base: Path, tmp_path: Path, shared_data: Path
) -> None:
    """No train/serve skew, scale step included: the loader's crop is the crop the backend receives."""
    paths = [_field(tmp_path, 11), next((shared_data / "aria-all" / "Original" / "Pre").glob("*.jpg"))]
    card = parse_card(
        (cell_model_base / "allnet-cell" / "1" / "assets.extra" / "model_card.json").read_text()
    )
    assert card.cell_input is not None and card.cell_input.stain is not None
    trained = load_samples([Sample(p, 0, p.name) for p in paths], (CELL_INPUT, CELL_INPUT), card.cell_input)

    async def served() -> list[np.ndarray]:
        recording = Recording(EmbeddedBackend(cell_model_base))
        await recording.backend.start()
        try:
            diagnosis = Diagnosis(Settings(metrics_port=0), recording)  # type: ignore[arg-type]
            for path in paths:
                answer = await diagnosis.classify(path.read_bytes(), ModelSpec(), 60)
                assert answer.classification.finding is not None
                assert answer.classification.finding.scale is not None
            return [batch[0] for batch in recording.inputs]
        finally:
            await recording.backend.close()

    got = asyncio.run(served())
    assert len(got) == len(paths)
    for train_tensor, serve_tensor in zip(trained.images, got, strict=True):
        assert serve_tensor.shape == (CELL_INPUT, CELL_INPUT, 3)
        assert np.array_equal(train_tensor, serve_tensor)


@pytest.fixture(scope="module")
def stub(cell_model_base: Path) -> Iterator[pb_grpc.DiagnosisServiceStub]:
    runner = GatewayThread(gateway_settings(cell_model_base))
    running = runner.start()
    try:
        with grpc.insecure_channel(running.target) as channel:
            yield pb_grpc.DiagnosisServiceStub(channel)
    finally:
        runner.stop()


def test_an_answer_reports_the_scale_the_cells_and_the_region(
    stub: pb_grpc.DiagnosisServiceStub, tmp_path: Path
) -> None:
    data = _field(tmp_path, 21).read_bytes()
    answer = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=data)), timeout=60).classification
    assert answer.HasField("estimated_scale") and answer.estimated_scale > 0
    assert answer.scale_source in ("red_cells", "white_cell")
    assert answer.white_cells >= 1
    region = answer.region
    assert region.bottom - region.top == region.right - region.left > 0


def test_an_image_without_a_white_cell_is_outside_the_domain_and_says_why(
    stub: pb_grpc.DiagnosisServiceStub,
) -> None:
    grey = png_bytes(np.full((80, 80, 3), 190, np.uint8))
    answer = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=grey)), timeout=60).classification
    assert answer.white_cells == 0 and not answer.HasField("estimated_scale")
    assert answer.HasField("in_domain") and not answer.in_domain
    assert "no white cell" in " ".join(answer.domain_reasons)


def test_the_explanation_works_on_the_cell_at_its_own_resolution(
    stub: pb_grpc.DiagnosisServiceStub, tmp_path: Path
) -> None:
    data = _field(tmp_path, 31).read_bytes()
    options = pb.ExplainOptions(num_samples=120, seed=3, pictures=[pb.PICTURE_KIND_OVERLAY])
    reply = stub.Explain(pb.ExplainRequest(image=pb.Image(data=data), options=options), timeout=120)
    explanation = reply.explanation
    assert explanation.composition == pb.COMPOSITION_GATEWAY
    quality = explanation.quality
    assert quality.cell_share + quality.background_share + quality.corner_share == pytest.approx(
        1.0, abs=1e-6
    )
    picture = Image.open(io.BytesIO(explanation.pictures[0].png))
    # The view (the crop at the field's own resolution, at least the input size) is what is drawn.
    assert min(picture.size) >= CELL_INPUT


def test_composition_in_the_model_is_refused_when_the_view_is_larger(
    stub: pb_grpc.DiagnosisServiceStub, tmp_path: Path
) -> None:
    data = png_bytes(make_cell_image(0, 400, np.random.default_rng(9)))
    options = pb.ExplainOptions(num_samples=60, composition=pb.COMPOSITION_MODEL)
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(pb.ExplainRequest(image=pb.Image(data=data), options=options), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "own resolution" in (info.value.details() or "")
