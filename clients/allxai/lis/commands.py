"""``allxai lis``: the LIS adapter's tools: review a report, and look into the MLLP outbox.

``finalize RECORD --reviewer-id ID`` makes the preliminary report of a report record (``<image>.report.json``
next to an image, ``report.json`` in a specimen folder, or any path) final; ``correct RECORD --cell N=CLASS
--note TEXT --reviewer-id ID`` changes the class of cells of a final or corrected one. Each writes the new
ORU^R01 and FHIR bundle (by default next to the record: ``.report.json`` becomes ``.hl7`` and ``.fhir.json``),
queues the ORU in ``--outbox`` when given (a running watcher's sender delivers it), and then updates the
record (status, revision, history). Exit status 0, 1 when the review is refused (the message says why) or
the record is unreadable, 2 on usage.

``outbox list`` shows the pending and failed messages (``--all`` also the done ones) and the depth per state;
``outbox retry ID`` makes a failed message pending again (a running watcher picks it up within its idle poll);
``outbox drop ID`` deletes one. Exit status 0, 1 when the id is unknown (or not failed, for ``retry``), 2 on
usage.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allxai.lis import _folder as files
from allxai.lis._report import LabReport, Reviewer
from allxai.lis.config import load_config
from allxai.lis.fhir import to_fhir_json
from allxai.lis.fhir_post import bundle_identifier
from allxai.lis.hl7 import to_oru
from allxai.lis.outbox import STATES, Entry, Outbox, control_id_of
from allxai.lis.record import next_record, read_record, record_hl7_options, report_from_record, write_record
from allxai.lis.review import correct, finalize

#: Where ``allxai watch --mllp`` keeps its outbox unless ``--outbox`` says otherwise: inside the folder.
DEFAULT_OUTBOX_NAME = ".allxai-outbox.sqlite"
#: The name of a report record next to an image (``<image>.report.json``) and in a specimen folder.
RECORD_SUFFIX = ".report.json"
SPECIMEN_RECORD_NAME = "report.json"


def default_output(record: Path, suffix: str) -> Path:
    """Where a review writes an output by default: next to ``record``, whose ``.report.json`` (or plain
    ``.json``) becomes ``suffix``; ``<image>.report.json`` gives ``<image>.hl7``, as the watcher names it."""
    name = record.name
    if name.endswith(RECORD_SUFFIX):
        base = name[: -len(RECORD_SUFFIX)]
    elif name == SPECIMEN_RECORD_NAME:
        base = "report"
    else:
        base = name.removesuffix(".json")
    return record.with_name(base + suffix)


def _cell_change(text: str) -> tuple[int, str]:
    number, sep, label = text.partition("=")
    if not sep or not number.strip().isdigit() or not label.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give N=CLASS, N the cell number (0 the single image, 1... a specimen's cells)"
        )
    return int(number), label.strip()


def _review_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("record", type=Path, help="the report record (<image>.report.json, or report.json)")
    p.add_argument(
        "--reviewer-id", required=True, help="the LIS's id of the reviewer (HL7 OBR-32 and OBX-16, FHIR)"
    )
    p.add_argument("--reviewer-family", default="", help="the reviewer's family name")
    p.add_argument("--reviewer-given", default="", help="the reviewer's given name")
    p.add_argument(
        "--lis-config",
        type=Path,
        help="the LIS configuration (class codes, identifier systems); default the built-in lis.toml",
    )
    p.add_argument(
        "--outbox",
        type=Path,
        help=f"queue the ORU in this MLLP outbox (the watcher's --outbox, or <folder>/{DEFAULT_OUTBOX_NAME})",
    )
    p.add_argument(
        "--queue-fhir",
        action="store_true",
        help="also queue the FHIR bundle in --outbox (when the watcher posts to a FHIR server: --fhir-url)",
    )
    p.add_argument("--hl7", type=Path, help="where to write the ORU^R01 (default: the record's .hl7)")
    p.add_argument(
        "--fhir", type=Path, help="where to write the FHIR bundle (default: the record's .fhir.json)"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allxai lis", description="The LIS adapter's tools.")
    sub = p.add_subparsers(dest="command", required=True)
    fin = sub.add_parser(
        "finalize", help="a reviewer confirms a preliminary report: it becomes final (HL7 F)"
    )
    _review_options(fin)
    cor = sub.add_parser("correct", help="a reviewer changes cells' classes of a final report (HL7 C)")
    _review_options(cor)
    cor.add_argument(
        "--cell",
        type=_cell_change,
        action="append",
        required=True,
        metavar="N=CLASS",
        help="cell N (0 the single image, 1... a specimen's cells) is CLASS, a model class; repeatable",
    )
    cor.add_argument("--note", required=True, help="the reason for the correction, sent with it")
    box = sub.add_parser("outbox", help="inspect the MLLP outbox; retry or drop a message")
    box.add_argument(
        "--path",
        type=Path,
        required=True,
        help=f"the outbox file (the watcher's --outbox, or <folder>/{DEFAULT_OUTBOX_NAME})",
    )
    actions = box.add_subparsers(dest="action")
    listing = actions.add_parser("list", help="pending and failed messages (the default)")
    listing.add_argument("--all", action="store_true", help="also the done ones")
    actions.add_parser("retry", help="send a failed message again").add_argument("id", help="its MSH-10")
    actions.add_parser("drop", help="delete a message").add_argument("id", help="its MSH-10")
    return p


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(e: Entry) -> str:
    ack = f" {e.ack_code}" if e.ack_code else ""
    reason = f"  {e.reason}" if e.reason else ""
    when = _when(e.updated_at)
    return f"{e.control_id:<20}  {e.state:<7}{ack:<4}  {e.attempts:>3}  {when}  {e.source}{reason}"


def _review(args: argparse.Namespace) -> int:
    """``finalize`` or ``correct``: build everything first, so that a refusal writes nothing."""
    prog = f"allxai lis {args.command}"
    record_path: Path = args.record
    hl7_path: Path = args.hl7 or default_output(record_path, files.HL7_SUFFIX)
    fhir_path: Path = args.fhir or default_output(record_path, files.FHIR_SUFFIX)
    if len({record_path.resolve(), hl7_path.resolve(), fhir_path.resolve()}) < 3:
        print(
            f"{prog}: the record, the HL7 and the FHIR output must be three different files", file=sys.stderr
        )
        return 2
    if args.outbox is not None and not args.outbox.is_file():
        # Outbox() would create a new one, which no watcher sends from: the message would wait forever.
        print(f"{prog}: no outbox at {args.outbox}", file=sys.stderr)
        return 2
    if args.command == "correct":
        numbers = [number for number, _ in args.cell]
        if len(set(numbers)) < len(numbers):
            print(f"{prog}: a cell is given twice in --cell", file=sys.stderr)
            return 2
    try:
        data = read_record(record_path)
        report = report_from_record(data, load_config(args.lis_config))
        reviewer = Reviewer(args.reviewer_id, args.reviewer_family, args.reviewer_given)
        reviewed: LabReport
        if args.command == "finalize":
            reviewed = finalize(report, reviewer)
        else:
            reviewed = correct(report, reviewer, dict(args.cell), args.note)
        message = to_oru(reviewed, **record_hl7_options(data))
        bundle = to_fhir_json(reviewed)
        control_id = control_id_of(message)
        record: dict[str, Any] = next_record(data, reviewed, control_id=control_id)
    except ValueError as exc:  # a refused review, an unreadable record or configuration, an unmapped class
        print(f"{prog}: {record_path}: {exc}", file=sys.stderr)
        return 1
    try:
        files.write_atomic(hl7_path, message.encode())
        print(f"{hl7_path}: ORU^R01 written, status {reviewed.hl7_status}, control id {control_id}")
        files.write_atomic(fhir_path, bundle.encode())
        print(f"{fhir_path}: FHIR bundle written, status {reviewed.status}")
        if args.outbox is not None:
            source = f"review:{record_path.name}#{record['revision']}"
            with Outbox(args.outbox) as outbox:
                _, added = outbox.put(message, source=source)
                print(f"{args.outbox}: {control_id} {'queued' if added else 'was queued already'}")
                if args.queue_fhir:
                    key, added = outbox.put(bundle, source=source, kind="fhir", key=bundle_identifier(bundle))
                    print(f"{args.outbox}: FHIR bundle {key} {'queued' if added else 'was queued already'}")
        # The record last: until it says so, the review did not happen. Running it again after a failure
        # here queues the report again under a new control id, which the LIS files as a repeat of the same
        # filler number (OBR-3): the same result, not a second one.
        write_record(record_path, record)
    except (OSError, sqlite3.Error) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(f"{record_path}: revision {record['revision']}, {reviewed.status} by {reviewer.display}")
    return 0


def _outbox(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        print(f"allxai lis outbox: no outbox at {path}", file=sys.stderr)
        return 2
    with Outbox(path) as outbox:
        if args.action == "retry":
            if outbox.retry(args.id):
                print(f"{args.id}: pending again")
                return 0
            entry = outbox.get(args.id)
            state = "unknown" if entry is None else entry.state
            print(f"allxai lis outbox: {args.id} is {state}, not failed", file=sys.stderr)
            return 1
        if args.action == "drop":
            if outbox.drop(args.id):
                print(f"{args.id}: dropped")
                return 0
            print(f"allxai lis outbox: {args.id} is unknown", file=sys.stderr)
            return 1
        shown = STATES if getattr(args, "all", False) else ("pending", "failed")
        print(f"{'control id':<20}  {'state':<7}{'ack':<4}  {'try':>3}  {'updated':<20}  source  reason")
        for entry in outbox.entries(shown):
            print(_line(entry))
        depth = outbox.depth()
        print("depth: " + ", ".join(f"{state} {depth[state]}" for state in STATES))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``allxai lis ...``; see the module's docstring. Returns the exit status (2 on usage)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exited:
        # argparse exits on a usage error (2) or --help (0); return the status, as every other outcome does.
        return exited.code if isinstance(exited.code, int) else 2
    if args.command == "outbox":
        return _outbox(args)
    return _review(args)


if __name__ == "__main__":
    sys.exit(main())
