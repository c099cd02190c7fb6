"""The gateway commands of ``allxai``: classify, explain, specimen and info.

Each reports a bad input on its own line (``path: error: ...``) and goes on with the others; any failure
makes the exit status 1. Progress bars (tqdm) go to standard error, and only to a terminal.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from allxai.client import _output as out
from allxai.client._info import info_document, info_text
from allxai.client._results import AllxaiClientError, ModelDescription
from allxai.client.inputs import InputImage, Inputs, expand, output_path
from allxai.client.sdk import Client


class _Run:
    """The images of one command, its records, and how many things failed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.inputs: Inputs = expand(args.images)
        self.records: list[out.Record] = []
        self.failed = 0
        for spec, problem in self.inputs.problems:
            self.fail(spec, problem)

    @property
    def text(self) -> bool:
        """Whether results go to standard output as lines (not as JSON or CSV)."""
        return not (self.args.json or self.args.csv)

    def fail(self, where: object, error: str | BaseException, image: InputImage | None = None) -> None:
        """Report one failure on its own line, and keep a record of it when it concerns an image."""
        if isinstance(error, OSError):
            error = f"cannot read: {error.strerror or error}"
        tqdm.write(f"{where}: error: {error}", file=sys.stderr)
        self.failed += 1
        if image is not None:
            self.records.append(out.error_record(image, str(error)))

    def say(self, line: str) -> None:
        """A result line on standard output, unless the output is JSON or CSV."""
        if self.text:
            tqdm.write(line, file=sys.stdout)

    def bar(self, items: Iterable[InputImage], what: str) -> Iterator[InputImage]:
        """Iterate with a progress bar when there is more than one image."""
        return iter(
            tqdm(
                items,
                desc=what,
                unit="image",
                disable=True if self.args.quiet or len(self.inputs.images) < 2 else None,
            )
        )

    def finish(self, document: Any = None, rows: list[out.Record] | None = None) -> int:
        """Write the JSON and CSV outputs asked for; the exit status."""
        document = self.records if document is None else document
        rows = self.records if rows is None else rows
        if self.args.json or self.args.json_out:
            text = out.json_text(document)
            out.write("-" if self.args.json else None, text)
            out.write(self.args.json_out, text)
        if self.args.csv or self.args.csv_out:
            text = out.csv_text(rows)
            out.write("-" if self.args.csv else None, text)
            out.write(self.args.csv_out, text)
        if self.failed:
            print(f"{self.failed} error(s); see above", file=sys.stderr)
        return 1 if self.failed else 0


def uncalibrated(info: ModelDescription, alpha: float | None) -> str:
    """Why ``--alpha`` cannot be asked of this model (a level its card does not list); empty when it can."""
    levels = info.alphas
    if alpha is None or any(math.isclose(alpha, a, rel_tol=1e-6) for a in levels):
        return ""
    if not levels:
        return (
            f"model {info.name} carries no conformal calibration: it gives no prediction sets, so --alpha "
            "cannot be used"
        )
    listed = ", ".join(f"{a:g}" for a in levels)
    return f"--alpha {alpha:g} was not calibrated for model {info.name}; choose one of {listed}"


def _model(client: Client, args: argparse.Namespace) -> ModelDescription | None:
    """The served model, once the ``--alpha`` asked for is one it was calibrated for (else None, said)."""
    info = client.model_info()
    why = uncalibrated(info, args.alpha)
    if why:
        print(f"allxai: error: {why}", file=sys.stderr)
        return None
    return info


def classify(client: Client, args: argparse.Namespace) -> int:
    """Classify every image, one call each."""
    run = _Run(args)
    info = _model(client, args)
    if info is None:
        return 2
    many = len(run.inputs.images) > 1
    for image in run.bar(run.inputs.images, "classifying"):
        try:
            result = client.classify(image.path, image_id=image.image_id, alpha=args.alpha)
        except (AllxaiClientError, OSError) as exc:
            run.fail(image.path, exc, image)
            continue
        record = out.classify_record(image, result, info)
        run.records.append(record)
        prefix = f"{image.path}: " if many else ""
        run.say(f"{prefix}{out.cell_line(record)}")
    return run.finish()


@contextmanager
def _sample_bar(image: InputImage, quiet: bool) -> Iterator[Any]:
    """A bar of one explanation's samples: the gateway's first report gives its length (0 of N)."""
    bar = tqdm(total=None, desc=image.name, unit="sample", leave=False, disable=True if quiet else None)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            # A new length is drawn at once: update() alone redraws only every mininterval.
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def _existing_picture(folder: Path, images: list[InputImage], kinds: list[str]) -> Path | None:
    """The first picture file explain would write that exists already (the names output_path gives)."""
    for image in images:
        for kind in kinds:
            path = folder.joinpath(*PurePosixPath(f"{image.name}_{kind}.png").parts)
            if path.exists():
                return path
    return None


def explain(client: Client, args: argparse.Namespace) -> int:
    """Explain every image, write its pictures to the output folder, and say how far to trust each.

    Pictures already in the folder are kept unless ``--overwrite``: the command then stops (status 2, a
    wrong command line) before any call to the gateway, naming the first picture it would replace."""
    run = _Run(args)
    existing = None if args.overwrite else _existing_picture(Path(args.out), run.inputs.images, args.pictures)
    if existing is not None:
        print(
            f"allxai: error: {existing} exists; pass --overwrite to replace the pictures in {args.out}, "
            "or choose another --out",
            file=sys.stderr,
        )
        return 2
    info = _model(client, args)
    if info is None:
        return 2
    folder = Path(args.out)
    many = len(run.inputs.images) > 1
    for image in run.bar(run.inputs.images, "explaining"):
        try:
            with _sample_bar(image, args.quiet) as progress:
                result = client.explain(
                    image.path,
                    progress=progress,
                    image_id=image.image_id,
                    num_samples=args.samples,
                    seed=args.seed,
                    top_k=args.top_k,
                    pictures=args.pictures,
                    target_label=args.label,
                    adaptive=args.adaptive,
                    alpha=args.alpha,
                )
            written = {}
            for kind, png in result.pictures.items():
                written[kind] = output_path(folder, image, f"_{kind}.png")
                written[kind].write_bytes(png)
        except (AllxaiClientError, OSError) as exc:
            run.fail(image.path, exc, image)
            continue
        if not args.quiet:
            tqdm.write(f"wrote {', '.join(map(str, written.values()))}", file=sys.stderr)
        record = out.explain_record(image, result, info, written)
        run.records.append(record)
        q = result.quality
        run.say(
            f"{f'{image.path}: ' if many else ''}{out.cell_line(record)} (explained {result.label} with "
            f"{result.num_samples} samples, seed {result.seed}; top superpixels {result.top_segments}; "
            f"surrogate R2 {_figure(q.get('r2'))}, stability {_figure(q.get('stability'))}; "
            f"positive weight on the cell "
            f"{q['cell_share']:.0%}, background {q['background_share']:.0%}, corners {q['corner_share']:.0%})"
        )
        for warning in result.warnings:
            run.say(f"  warning: {warning}")
    return run.finish()


def specimen(client: Client, args: argparse.Namespace) -> int:
    """Classify all cells of one specimen together and summarise it; nothing is sent if a cell is missing."""
    run = _Run(args)
    images = run.inputs.images
    for image in images:
        # Opened up front, but read only as each batch is sent: a large specimen need not fit in memory.
        try:
            with open(image.path, "rb"):
                pass
        except OSError as exc:
            run.fail(image.path, exc)
    if not images and not run.failed:
        run.fail("specimen", "no images given")
    if run.failed:
        # A summary over fewer cells than the specimen has would misstate its blast fraction.
        print("error: the specimen is incomplete; nothing was sent", file=sys.stderr)
        return 1
    info = _model(client, args)
    if info is None:
        return 2
    try:
        paths = [i.path for i in images]
        ids = [i.image_id for i in images]
        result = client.classify_specimen(paths, args.specimen_id, ids, alpha=args.alpha)
    except AllxaiClientError as exc:
        index = exc.image_index
        run.fail(images[index].path if index is not None and index < len(images) else "specimen", exc)
        return 1
    cells = [out.classify_record(i, c, info) for i, c in zip(images, result.cells, strict=True)]
    document = out.specimen_document(result, cells, info, args.review)
    run.say(out.specimen_text(document, info))
    return run.finish(document, cells)


def info(client: Client, args: argparse.Namespace) -> int:
    """Describe the served model: a summary, or (``--json``) everything, the model card included."""
    described: ModelDescription = client.model_info()
    if args.json:
        # A model card's NaN becomes null: JSON has no NaN.
        print(out.json_text(info_document(described)), end="")
    else:
        print(info_text(described), end="")
    return 0


def _figure(value: float | None) -> str:
    """A quality figure to two places, or "none" where it is undefined or was not measured."""
    return "none" if value is None or math.isnan(value) else f"{value:.2f}"
