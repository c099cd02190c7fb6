"""A gRPC client that is not ours reaches the service through reflection: buf curl."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, RunningGateway

ROOT = REPO
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def buf() -> str:
    found = str(BUF) if BUF.exists() else shutil.which("buf")
    if found is None:
        pytest.skip("buf is not installed (make setup installs it)")
    return found


def test_buf_lint() -> None:
    result = subprocess.run([buf(), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def buf_curl(target: str, data: str) -> subprocess.CompletedProcess[str]:
    """The command docs/sdk.md documents: Classify through server reflection."""
    command = [
        buf(),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--data",
        data,
        f"http://{target}/allxai.v1.DiagnosisService/Classify",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_buf_curl_classifies_through_reflection(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"image": {"data": base64.b64encode(cell_png).decode(), "imageId": "c1"}}))
    result = buf_curl(gateway.target, f"@{request}")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["imageId"] == "c1"
    assert [s["label"] for s in reply["classification"]["scores"]] == ["Benign", "Early", "Pre", "Pro"]


def test_buf_curl_sees_invalid_argument(gateway: RunningGateway) -> None:
    result = buf_curl(gateway.target, "{}")
    assert result.returncode != 0
    error = json.loads(result.stderr or result.stdout)
    assert error["code"] == "invalid_argument"
    assert error["details"][0]["type"] == "google.rpc.BadRequest"
