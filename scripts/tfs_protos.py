"""Generate ``allxai.tfs_protos``: TensorFlow Serving's client messages and stubs without TensorFlow.

``tensorflow_serving.apis`` (the tensorflow-serving-api wheel) imports TensorFlow, ~770 MB, only to reach
``TensorProto`` and friends. The gateway's tfserving backend needs the messages and stubs alone, so this
script regenerates them from the descriptors that the installed tensorflow-serving-api and tensorflow
packages carry. Neither wheel ships its ``.proto`` sources (and tensorflow-serving-api has no sdist), but
every generated ``_pb2`` module embeds its file's ``FileDescriptorProto`` byte for byte
(``DESCRIPTOR.serialized_pb``): protoc reads those with ``--descriptor_set_in`` and emits the same code it
would from the sources, so nothing is retyped.

The ``.proto`` file names stay the originals (``tensorflow/core/framework/tensor.proto``...), and with them
the descriptors: the protobuf runtime accepts an identical file added twice, so these modules and
TensorFlow's can live in one process (tests, the embedded backend). Only the Python module paths move
under ``allxai.tfs_protos`` (``allxai.tfs_protos.tensorflow_serving.apis.predict_pb2``); the generated
imports are rewritten to match.

Run it with ``make tfs-protos`` (needs the dev environment: tensorflow-serving-api, grpcio-tools,
mypy-protobuf). ``--out DIR`` writes elsewhere (the tests regenerate into a temporary folder and compare).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "proto" / "allxai" / "tfs_protos"
PACKAGE = "allxai.tfs_protos"
#: The modules whose files (and their imports, transitively) the gateway needs: Predict and GetModelMetadata
#: (PredictionService), GetModelStatus (ModelService).
ROOTS = (
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
)
#: The protobuf package ships these (well-known types); they are imported from it, never generated.
PROVIDED = "google/protobuf/"
#: Files that are ours in the output folder, not generated: kept when the folder is regenerated.
KEPT = {"README.md", "ruff.toml"}


def closure() -> list[Any]:
    """The FileDescriptors of ROOTS and everything they import, dependencies first."""
    seen: dict[str, Any] = {}

    def walk(file: Any) -> None:
        if file.name in seen or file.name.startswith(PROVIDED):
            return
        for dependency in file.dependencies:
            walk(dependency)
        seen[file.name] = file

    for module in ROOTS:
        walk(importlib.import_module(module).DESCRIPTOR)
    return list(seen.values())


def descriptor_set(files: list[Any]) -> bytes:
    """A serialized FileDescriptorSet of exactly the bytes the installed modules embed."""
    fds = descriptor_pb2.FileDescriptorSet()
    for file in files:
        fds.file.add().ParseFromString(file.serialized_pb)
    # Files only: their bytes are compared, not rebuilt, so each equals the installed module's.
    assert [f.SerializeToString() for f in fds.file] == [f.serialized_pb for f in files]
    return fds.SerializeToString()


def run_protoc(descriptors: Path, names: list[str], out: Path) -> None:
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--descriptor_set_in={descriptors}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--mypy_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out}",
        *names,
    ]
    subprocess.run(command, check=True)


def rewrite(text: str, module_paths: set[str]) -> str:
    """Point the generated imports and qualified names at ``allxai.tfs_protos.<original module>``.

    ``module_paths`` holds every generated module and each of its parent packages, dotted.
    """
    top_level = "|".join(sorted({path.split(".")[0] for path in module_paths}))

    def qualify(match: re.Match[str]) -> str:
        # Only a dotted name that starts with a generated package path of two parts or more moves. One part
        # is not enough: "tensorflow" is both a generated folder and the proto package of
        # "tensorflow.TensorProto", whereas "tensorflow.core" or "tensorflow_serving.apis" is only a path.
        parts = match.group(0).split(".")
        if any(".".join(parts[:end]) in module_paths for end in range(2, len(parts) + 1)):
            return f"{PACKAGE}.{match.group(0)}"
        return match.group(0)

    # `from tensorflow.core.framework import tensor_pb2`, `import tensorflow_serving.apis.model_pb2`,
    # mypy-protobuf's qualified names and the module names handed to protobuf's builder as strings; never
    # inside the serialized descriptor, which must stay the installed bytes.
    pattern = re.compile(rf"(?<![\w.])({top_level})(\.\w+)+")
    return "".join(
        line if "AddSerializedFile(" in line else pattern.sub(qualify, line)
        for line in text.splitlines(keepends=True)
    )


def generate(out: Path) -> list[Path]:
    """Regenerate every module into ``out`` (its generated files are replaced); the files written."""
    files = closure()
    names = [f.name for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "tfs.binpb"
        descriptors.write_bytes(descriptor_set(files))
        build = Path(tmp) / "build"
        build.mkdir()
        run_protoc(descriptors, names, build)
        generated = sorted(p for p in build.rglob("*") if p.is_file())
        services = {f.name.removesuffix(".proto") for f in files if f.services_by_name}
        # grpc's plugins write a _grpc module for every file; only those with a service have content.
        generated = [
            p
            for p in generated
            if "_grpc" not in p.name or str(p.relative_to(build)).split("_pb2_grpc")[0] in services
        ]
        module_paths: set[str] = set()
        for path in generated:
            parts = path.relative_to(build).with_suffix("").parts
            module_paths.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
        for old in [*out.glob("*")] if out.exists() else []:
            if old.name not in KEPT:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for source in generated:
            target = out / source.relative_to(build)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite(source.read_text(), module_paths))
            written.append(target)
    # Regular packages (the wheel lists each in pyproject.toml), each marked typed for mypy.
    for folder in sorted({out, *(p.parent for p in written)}):
        while True:
            (folder / "__init__.py").touch()
            (folder / "py.typed").touch()
            if folder == out:
                break
            folder = folder.parent
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args()
    written = generate(args.out)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
