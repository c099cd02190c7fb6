"""Put an exported SavedModel version where TensorFlow Serving reads it: ``<base>/<model>/<version>/``.

    python scripts/upload_model.py results/models/allnet/2 /mnt/models --model allnet --version 2
    python scripts/upload_model.py results/models/allnet/2 s3://allxai-models --model allnet --version 2
    python scripts/upload_model.py results/models/allnet/2 gs://allxai-models --model allnet --version 2

The source is one exported version (a folder with ``saved_model.pb``, as ``allxai export`` writes it). An
existing version is never overwritten: TensorFlow Serving treats a version as immutable, and a running pod
may be reading it. ``--version`` defaults to the source folder's name when that is a number.

- A local path (a mounted PVC, an NFS share): the version is copied into a hidden sibling folder
  ``<base>/<model>/.upload-<version>-<random>`` and renamed to ``<version>`` in one ``rename``, so a reader
  sees no version or the whole version, never part of one (TensorFlow Serving ignores folder names that
  are not numbers, the hidden folder included). A failed copy leaves the hidden folder removed.
- ``s3://`` (the aws CLI) or ``gs://`` (gsutil): object stores have no rename, so the files go straight to
  ``<base>/<model>/<version>/`` with ``saved_model.pb`` last; TensorFlow Serving loads only the versions
  that ``models.config`` lists, and the GPU pods fetch only those in ``model-source.yaml``, so list the
  version (``scripts/promote_canary.py start <version>``) only after this command has succeeded.

Only the local path is tested here (tests/deploy/test_deploy_tools.py): no cloud credentials or CLIs exist
in the test environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SAVED_MODEL = "saved_model.pb"


class UploadError(Exception):
    """The upload was refused or failed; nothing was left at the version's path."""


def check_source(source: Path) -> None:
    if not (source / SAVED_MODEL).is_file():
        raise UploadError(f"{source} is no SavedModel version: it has no {SAVED_MODEL}")


def upload_local(source: Path, base: Path, model: str, version: int) -> Path:
    """Copy ``source`` to ``base/model/version`` atomically; the path written."""
    check_source(source)
    parent = base / model
    target = parent / str(version)
    if target.exists():
        raise UploadError(f"{target} exists: versions are immutable, upload under a new version")
    parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target, so the final rename stays on one file system and is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".upload-{version}-", dir=parent))
    try:
        copied = staging / "version"
        shutil.copytree(source, copied)
        # Data on disk before the name appears: a crash after the rename never shows a torn version.
        for path in copied.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
        try:
            # os.rename onto an existing folder fails (non-empty) or replaces it (empty); check right before
            # and refuse either way: a second upload that raced this one keeps its version.
            if target.exists():
                raise UploadError(f"{target} appeared during the upload; left as it is")
            copied.rename(target)
        except OSError as exc:
            raise UploadError(f"could not move the version into place at {target}: {exc}") from exc
        directory = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself is durable
        finally:
            os.close(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def upload_object_store(source: Path, base: str, model: str, version: int) -> str:
    """Copy ``source`` to ``base/model/version/`` with the aws CLI or gsutil, ``saved_model.pb`` last."""
    check_source(source)
    target = f"{base.rstrip('/')}/{model}/{version}"
    scheme = base.split("://", 1)[0]
    tool = {"s3": "aws", "gs": "gsutil"}[scheme]
    if shutil.which(tool) is None:
        raise UploadError(f"{base} needs the {tool} command, which is not installed")
    listing = ["aws", "s3", "ls", f"{target}/"] if scheme == "s3" else ["gsutil", "ls", f"{target}/"]
    found = subprocess.run(listing, capture_output=True, text=True, check=False)
    if found.returncode == 0 and found.stdout.strip():
        raise UploadError(f"{target}/ exists: versions are immutable, upload under a new version")
    if scheme == "s3":
        steps = [
            ["aws", "s3", "cp", "--recursive", "--exclude", SAVED_MODEL, str(source), f"{target}/"],
            ["aws", "s3", "cp", str(source / SAVED_MODEL), f"{target}/{SAVED_MODEL}"],
        ]
    else:
        rest = [str(p) for p in sorted(source.iterdir()) if p.name != SAVED_MODEL]
        steps = [
            ["gsutil", "-m", "cp", "-r", *rest, f"{target}/"],
            ["gsutil", "cp", str(source / SAVED_MODEL), f"{target}/{SAVED_MODEL}"],
        ]
    for step in steps:
        if subprocess.run(step, check=False).returncode != 0:
            raise UploadError(f"{' '.join(step)} failed; {target}/ may hold part of the version: delete it")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="one exported version (a folder with saved_model.pb)")
    parser.add_argument(
        "base", help="the model base: a local path, s3://bucket[/prefix] or gs://bucket[/prefix]"
    )
    parser.add_argument("--model", default="allnet", help="the model's name, a folder under the base")
    parser.add_argument("--version", type=int, help="the version number (default: the source folder's name)")
    args = parser.parse_args(argv)
    version = args.version
    if version is None:
        if not args.source.name.isdigit():
            parser.error(f"--version is needed: {args.source.name!r} is no version number")
        version = int(args.source.name)
    if version <= 0:
        parser.error("TensorFlow Serving's versions are positive numbers")
    try:
        if args.base.startswith(("s3://", "gs://")):
            where = upload_object_store(args.source, args.base, args.model, version)
        elif "://" in args.base:
            parser.error(f"{args.base}: only local paths, s3:// and gs:// are supported")
        else:
            where = str(upload_local(args.source, Path(args.base), args.model, version))
    except UploadError as exc:
        print(f"upload_model: {exc}", file=sys.stderr)
        return 1
    print(f"uploaded {args.source} as {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
