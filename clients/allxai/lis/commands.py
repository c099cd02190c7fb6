"""``allxai lis outbox``: look into the MLLP outbox, retry or drop a message by hand.

``list`` shows the pending and failed messages (``--all`` also the done ones) and the depth per state;
``retry ID`` makes a failed message pending again (a running watcher picks it up within its idle poll);
``drop ID`` deletes one. Exit status 0, 1 when the id is unknown (or not failed, for ``retry``), 2 on usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from allxai.lis.outbox import STATES, Entry, Outbox

#: Where ``allxai watch --mllp`` keeps its outbox unless ``--outbox`` says otherwise: inside the folder.
DEFAULT_OUTBOX_NAME = ".allxai-outbox.sqlite"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allxai lis", description="The LIS adapter's tools.")
    sub = p.add_subparsers(dest="command", required=True)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``allxai lis outbox ...``; see the module's docstring."""
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
