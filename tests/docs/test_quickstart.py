"""The README's quick start runs as written: every ``sh`` and ``python`` block between its markers, in order.

The blocks run against the real gateway of the test fixtures (``gateway``: the gateway ``allxai serve`` runs,
in a thread, over the tiny trained test model), in a temporary folder that holds the quick start's
``cell.jpg`` (the fixtures' synthetic cell, as JPEG). Shell blocks run with bash and ``.venv/bin`` first on
``PATH``; Python blocks run with the venv's Python. The snippets find the gateway through ``$ALLXAI_TARGET``,
which the ``allxai`` command takes as its default ``--target`` and the SDK snippet reads itself; a reader
without it set gets 127.0.0.1:50051, where ``allxai serve`` listens by default.

Blocks marked ``<!-- quickstart:skip -->`` are set-up and are not run here: ``allxai serve`` (the gateway
it would start is already up, on a free port; ``make demo`` runs ``allxai serve`` for real, as a process,
and classifies and explains through it), and putting ``.venv/bin`` on ``PATH`` and copying an Aria image
as ``cell.jpg`` (this test does both itself).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.conftest import REPO, RunningGateway

README = REPO / "README.md"
START, END, SKIP = "<!-- quickstart:start -->", "<!-- quickstart:end -->", "<!-- quickstart:skip -->"
BLOCK = re.compile(r"(?P<skip><!-- quickstart:skip -->\s*\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```", re.S)
#: The venv's bin folder: the Python running this test, and the ``allxai`` command beside it.
VENV_BIN = Path(sys.executable).parent
PERCENT = r"\d+(\.\d+)?%"


@dataclass(frozen=True)
class Snippet:
    lang: str
    code: str
    skip: bool


def quickstart() -> list[Snippet]:
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, f"README.md needs one {START} and one {END}"
    section = text.split(START, 1)[1].split(END, 1)[0]
    return [Snippet(m["lang"], m["code"], bool(m["skip"])) for m in BLOCK.finditer(section)]


def check_info(out: str) -> None:
    assert "allnet" in out and all(name in out for name in ("Benign", "Pro")), out


def check_classify(out: str) -> None:
    (line,) = out.strip().splitlines()  # one image: its class's name, the confidence, the domain check
    assert re.fullmatch(rf"\S*(Benign|Early|Pre|Pro)\S*( \S+)* {PERCENT}( — .+)?", line, re.I), out


def check_classify_json(out: str) -> None:
    (record,) = json.loads(out) if out.lstrip().startswith("[") else [json.loads(out)]
    assert record["label"] in record["scores"] and set(record["scores"]) == {"Benign", "Early", "Pre", "Pro"}
    assert 0 <= record["confidence"] <= 1 and record["model"] == "allnet" and record["request_id"], record


def check_explain(out: str) -> None:
    assert re.search(
        rf"^\S.* {PERCENT}.* \(explained \S+ with \d+ samples, seed 42; top superpixels", out, re.M
    )
    for kind in ("overlay", "mask", "heatmap", "figure"):
        assert f"cell_{kind}.png" in out, out


def check_sdk(out: str) -> None:
    assert re.search(r"^model allnet version \d+, classes \[", out, re.M), out
    assert re.search(rf"^\S.* {PERCENT}, in domain: (True|False|None)$", out, re.M), out
    assert re.search(r"^top superpixels \[[\d, ]*\], seed 42, figure in cell_figure.png$", out, re.M), out


#: What each block that runs must print, in the quick start's order.
CHECKS = [
    ("sh", check_info),
    ("sh", check_classify),
    ("sh", check_classify_json),
    ("sh", check_explain),
    ("python", check_sdk),
]


def test_the_quick_start_is_marked_and_every_block_is_checked() -> None:
    snippets = quickstart()
    skipped = [s for s in snippets if s.skip]
    assert any("allxai serve" in s.code for s in skipped), "the serve line must be marked quickstart:skip"
    assert all(s.lang in ("sh", "python") for s in snippets), [s.lang for s in snippets]
    ran = [s.lang for s in snippets if not s.skip]
    assert ran == [lang for lang, _ in CHECKS], "a block was added or removed: give it a check in CHECKS"
    python = next(s.code for s in snippets if s.lang == "python")
    assert 'os.environ.get("ALLXAI_TARGET", "127.0.0.1:50051")' in python


def test_the_quick_start_runs_as_written(gateway: RunningGateway, cell_png: bytes, tmp_path: Path) -> None:
    Image.open(io.BytesIO(cell_png)).convert("RGB").save(tmp_path / "cell.jpg", quality=95)
    env = {
        **os.environ,
        "ALLXAI_TARGET": gateway.target,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    runnable = [s for s in quickstart() if not s.skip]
    for number, (snippet, (_, check)) in enumerate(zip(runnable, CHECKS, strict=True), 1):
        if snippet.lang == "sh":
            argv = ["bash", "-euo", "pipefail", "-c", snippet.code]
        else:
            script = tmp_path / f"quickstart_{number}.py"
            script.write_text(snippet.code)
            argv = [str(VENV_BIN / "python"), script.name]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"block {number} failed:\n{snippet.code}\n{done.stdout}\n{done.stderr}"
        check(done.stdout)
