"""The layering of the repository: the import contracts hold, and break when a forbidden import is added.

``make layers`` (part of ``make test``) runs import-linter over the real tree; these tests run it over a copy
with one forbidden import added, to show each contract the design relies on actually fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCE_ROOTS = ("proto", "clients", "server", "trainer", "explainer")
#: "About 300 lines" (DESIGN.md): a little slack, so one docstring does not force a split.
MAX_MODULE_LINES = 320


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for folder in SOURCE_ROOTS:
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


#: import-linter run over the copy alone: the installed allxai (setuptools' editable finder and the .pth
#: naming this checkout's source roots) is taken off the path first, so no package resolves to the real tree.
_LINT_COPY = """
import sys
roots = set(sys.argv[1:])
sys.path[:] = [p for p in sys.path if "__editable__" not in p and not any(p.startswith(r) for r in roots)]
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
sys.argv = ["lint-imports", "--no-cache"]
from importlinter.cli import lint_imports_command
lint_imports_command()
"""


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / f) for f in SOURCE_ROOTS)}
    real = [str(REPO / f) for f in SOURCE_ROOTS]
    return subprocess.run(
        [sys.executable, "-c", _LINT_COPY, *real],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("clients/allxai/client/sdk.py", "import allxai.server.core", "The thin client"),
        ("clients/allxai/lis/hl7.py", "import allxai.trainer.fit", "The thin client"),
        ("explainer/allxai/explainer/engine.py", "import grpc", "The explainer knows no gRPC"),
        ("server/allxai/server/core.py", "import allxai.trainer.fit", "The gateway needs no trainer"),
        ("server/allxai/server/core.py", "import allxai.client.sdk", "The gateway needs no trainer"),
        ("trainer/allxai/trainer/export.py", "import allxai.server.core", "The trainer needs no gateway"),
        ("proto/allxai/contract/names.py", "import tensorflow", "The model contract imports nothing"),
        ("proto/allxai/contract/preprocessing.py", "import allxai.v1", "The model contract imports nothing"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    root = _copy(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{forbidden}  # added by the test\n")
    result = _lint(root)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
    assert forbidden.split()[-1] in broken


def test_no_hand_written_module_is_much_over_300_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for folder in SOURCE_ROOTS
        for path in (REPO / folder).rglob("*.py")
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
        and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (about 300 lines at most): {long}"
