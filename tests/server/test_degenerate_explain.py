"""Degenerate explanations through the real gateway: no NaN on the wire or in any JSON."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from allxai.client.cli import main
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway


@pytest.fixture
def stub(gateway: RunningGateway) -> Iterator[pb_grpc.DiagnosisServiceStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.DiagnosisServiceStub(channel)


def _strict(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity refused."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_one_sample_answers_null_r2_with_a_warning(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    options = pb.ExplainOptions(num_samples=1, seed=3)
    reply = stub.Explain(pb.ExplainRequest(image=pb.Image(data=cell_png), options=options), timeout=60)
    e = reply.explanation
    assert not e.HasField("score")
    assert not e.quality.HasField("r2") and not e.quality.HasField("stability")
    assert e.quality.evidence == pb.EVIDENCE_NONE
    assert list(e.top_segments) == []
    assert any("R² is undefined" in w for w in e.warnings)
    assert any(w.startswith("no evidence") for w in e.warnings)
    _strict(json_format.MessageToJson(reply))  # proto JSON would write "NaN" for a NaN double


def test_a_normal_explanation_has_its_figures_and_evidence(
    stub: pb_grpc.DiagnosisServiceStub, cell_png: bytes
) -> None:
    options = pb.ExplainOptions(num_samples=60, seed=3)
    e = stub.Explain(
        pb.ExplainRequest(image=pb.Image(data=cell_png), options=options), timeout=60
    ).explanation
    assert e.HasField("score") and e.quality.HasField("r2") and e.quality.HasField("stability")
    assert e.quality.evidence == pb.EVIDENCE_FOUND
    assert not any("stability was not measured" in w for w in e.warnings)


def test_the_cli_json_of_a_one_sample_explanation_has_no_nan(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    argv = ["explain", "--target", gateway.target, str(image), "--out", str(tmp_path / "out"),
            "--samples", "1", "--pictures", "heatmap", "--quiet", "--json"]  # fmt: skip
    assert main(argv) == 0
    [record] = _strict(capsys.readouterr().out)
    assert record["r2"] is None and record["stability"] is None
    assert record["no_evidence"] is True and record["top_segments"] == []
    assert any("no evidence" in w for w in record["warnings"])
    heatmap = (tmp_path / "out" / "cell_heatmap.png").read_bytes()
    assert (np.asarray(Image.open(io.BytesIO(heatmap))) == 255).all()  # neutral: nothing to colour
