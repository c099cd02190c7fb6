"""The plain distribution, installed alone in a fresh virtualenv: the SDK works and TensorFlow is absent."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, RunningGateway


@pytest.mark.slow
def test_the_plain_install_classifies_without_tensorflow(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("allxai-*.whl")
    env_dir = tmp_path / "plain"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=300)
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    code = f"""
import importlib.util, sys
from allxai.client import Client
with Client({gateway.target!r}, timeout=60) as client:
    result = client.classify({str(image)!r})
assert result.model == "allnet", result
absent = [m for m in ("tensorflow", "keras", "lime", "skimage", "PIL", "tensorflow_serving")
          if importlib.util.find_spec(m) is not None]
loaded = [m for m in ("tensorflow", "tqdm", "PIL") if m in sys.modules]
print("installed-but-should-not-be:", absent, "loaded:", loaded)
sys.exit(1 if absent or loaded else 0)
"""
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The one allxai command lists what the other parts offer, and says how to install them.
    allxai = env_dir / "bin" / "allxai"
    listing = subprocess.run([str(allxai), "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for name, extra in (("serve", "server"), ("train", "train"), ("watch", "lis")):
        assert f"(not installed: pip install 'allxai[{extra}]')" in listing.stdout, name
    assert "allxai loadtest -h" in listing.stdout  # the load tester is part of the thin client
    serve = subprocess.run([str(allxai), "serve"], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2
    assert "allxai serve is not installed here" in serve.stderr
    assert "pip install 'allxai[server]'" in serve.stderr
    # The server is not part of the plain install: importing it fails for want of its extras.
    server = subprocess.run(
        [str(python), "-c", "import allxai.server.app"], capture_output=True, text=True, timeout=60
    )
    assert server.returncode != 0 and "ModuleNotFoundError" in server.stderr
