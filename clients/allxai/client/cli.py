"""The allxai command: classify and explain cell images, whole specimens, and the served model.

Images may be given as files, folders (searched recursively for .png .jpg .jpeg .bmp .tif .tiff) and glob
patterns (quote them; ** recurses). Results print as lines; --json or --csv print JSON or CSV instead,
and --json-out FILE and --csv-out FILE write them as well. explain writes four pictures per image to --out
(<name>_overlay.png, _mask.png, _heatmap.png, _figure.png). The exit status is 0 when every image
succeeded, 1 when any failed (each failure on its own line), 2 for a wrong command line.

Every answer says whether the image lies inside the model's training domain: one outside it is called
OUTSIDE THE TRAINING DOMAIN, not for diagnosis, and a model without a domain check is said to have none.
A calibrated prediction set of more than one class is shown with its coverage (--alpha picks the level,
one the model was calibrated for); specimen counts the cells outside the domain and the ambiguous ones, and
says NEEDS REVIEW, with the reason, when the gateway asks for it. explain prints the explanation's warnings.

The other commands (serve, train, evaluate, export, compare, watch, lis, loadtest) are found among the
installed parts of allxai and loaded only when called; one whose extra is not installed says how to install
it. The commands that call a gateway (classify, explain, specimen, info, watch, loadtest) take the same TLS
and token options; a bearer token comes from --token-file or $ALLXAI_TOKEN. The --target of classify,
explain, specimen and info is $ALLXAI_TARGET when set, else 127.0.0.1:50051. serve, train, evaluate, export
and compare take none: the gateway's own TLS is set with ALLXAI_TLS_* settings. Numbers out of range are
refused with a message (status 2). --version prints the installed version.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from allxai.client import _commands
from allxai.client import options as opts
from allxai.client._channel import MAX_RETRIES, SPECIMEN_BATCH_SIZE
from allxai.client._plugins import installed_version, plugin_help, plugins, run_plugin
from allxai.client._results import PICTURE_KINDS, AllxaiClientError
from allxai.client._waiting import unavailable_hint
from allxai.client.sdk import Client

DEFAULT_TARGET = "127.0.0.1:50051"


def _client(args: argparse.Namespace) -> Client:
    return opts.client_from_args(
        args,
        timeout=args.timeout,
        explain_timeout=args.timeout,
        retries=args.retries,
        wait_for_ready=args.wait,
        specimen_batch_size=getattr(args, "batch_size", SPECIMEN_BATCH_SIZE),
    )


def _pictures(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PICTURE_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown picture {unknown[0]!r}; choose from {', '.join(PICTURE_KINDS)}"
        )
    return names


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument(
        "--target",
        default=os.environ.get("ALLXAI_TARGET") or DEFAULT_TARGET,
        help=f"gateway host:port (default $ALLXAI_TARGET when set, else {DEFAULT_TARGET}; now %(default)s)",
    )
    g.add_argument(
        "--timeout",
        type=opts.positive_float,
        default=120.0,
        help="deadline per call in seconds (default 120)",
    )
    g.add_argument(
        "--retries",
        type=opts.int_in(0, MAX_RETRIES),
        default=3,
        help=f"retries of UNAVAILABLE calls, 0-{MAX_RETRIES} (default 3)",
    )
    g.add_argument("--wait", action="store_true", help="wait (within the deadline) for a gateway not up yet")
    g.add_argument("--model", default="", help="model name (default: the server's)")
    versions = g.add_mutually_exclusive_group()
    versions.add_argument("--model-version", type=int, default=None, help="model version (default: newest)")
    versions.add_argument(
        "--version-label",
        default=None,
        metavar="LABEL",
        help="model version by its label (e.g. stable, canary), as the gateway's version labels name them",
    )
    opts.add_security_options(g)
    return common


def _output_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("output")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of lines")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of lines")
    g.add_argument("--json-out", metavar="FILE", help="also write the results as JSON to FILE")
    g.add_argument(
        "--csv-out", metavar="FILE", help="also write the results as CSV to FILE (one row per image)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars or notes on standard error")
    return common


#: The commands the thin client runs itself.
_BUILTIN = frozenset({"classify", "explain", "specimen", "info"})


def _parser(describe_plugins: bool = True) -> argparse.ArgumentParser:
    """The command line; ``describe_plugins`` loads each registered command for its help line (only
    worth its imports when the help is shown)."""
    parser = argparse.ArgumentParser(
        prog="allxai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"allxai {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection, output = _connection_options(), _output_options()
    images_help = "image files, folders (searched recursively) or quoted glob patterns"

    p = sub.add_parser("classify", parents=[connection, output], help="classify images, one call each")
    p.add_argument("images", nargs="+", metavar="IMAGE", help=images_help)
    opts.add_alpha_option(p)
    p.set_defaults(run=_commands.classify)

    p = sub.add_parser(
        "explain", parents=[connection, output], help="explain images with LIME and write their pictures"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help=images_help)
    p.add_argument(
        "--out", default="results", help="folder for the pictures, <name>_<kind>.png (default %(default)s)"
    )
    opts.add_lime_options(p)
    opts.add_alpha_option(p)
    p.add_argument(
        "--top-k", type=opts.int_in(1, opts.INT32_MAX), default=5, help="superpixels in the mask (default 5)"
    )
    p.add_argument("--label", default="", help="class to explain (default: the predicted one)")
    p.add_argument(
        "--pictures",
        type=_pictures,
        default=list(PICTURE_KINDS),
        help=f"comma-separated, of {', '.join(PICTURE_KINDS)} (default: all)",
    )
    p.add_argument(
        "--adaptive", action="store_true", help="stop sampling once the top superpixels are stable"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace pictures already in --out (without it, an existing one stops the command, status 2)",
    )
    p.set_defaults(run=_commands.explain)

    p = sub.add_parser(
        "specimen",
        parents=[connection, output],
        help="classify all cells of one specimen: per-cell results and a summary",
        description="Classify all cell images of one specimen (ClassifySpecimen, in batches) and summarise "
        "it: counts per class, blast fraction over the cells inside the training domain, the cells "
        "outside it and the ambiguous ones, whether it needs review, the cells to look at first. --json "
        "prints the whole specimen; --csv one row per cell.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help=images_help)
    p.add_argument("--specimen-id", default="", help="opaque specimen id, echoed back and audited")
    p.add_argument(
        "--batch-size",
        type=opts.int_in(1, opts.INT32_MAX),
        default=SPECIMEN_BATCH_SIZE,
        help="images per call; the gateway's limit is ALLXAI_MAX_SPECIMEN_IMAGES (default %(default)s)",
    )
    p.add_argument(
        "--review",
        type=opts.int_in(0, opts.INT32_MAX),
        default=10,
        help="cells to list for review, outside the training domain first, then least confident (default 10)",
    )
    opts.add_alpha_option(p)
    p.set_defaults(run=_commands.specimen)

    p = sub.add_parser(
        "info",
        parents=[connection],
        help="describe the served model: classes, accuracy, domain check, prediction sets",
    )
    p.add_argument("--json", action="store_true", help="print everything as JSON, the model card included")
    p.set_defaults(run=_commands.info)

    for name, entry in sorted(plugins().items()):
        what = plugin_help(entry) if describe_plugins else f"see allxai {name} -h"
        sub.add_parser(name, help=what, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``allxai`` command; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    registered = plugins()
    if argv and argv[0] in registered:
        return run_plugin(argv[0], registered[argv[0]], argv[1:])
    # The other commands' help lines import their modules: only for the top-level help or a wrong command.
    parser = _parser(describe_plugins=not argv or argv[0].startswith("-") or argv[0] not in _BUILTIN)
    args = parser.parse_args(argv)
    for flag in ("json_out", "csv_out"):
        value = getattr(args, flag, None)
        opts.prepare_output(parser, Path(value) if value else None, "--" + flag.replace("_", "-"))
    try:
        client = _client(args)
    except (ValueError, OSError) as exc:
        print(f"allxai: error: {exc}", file=sys.stderr)
        return 2
    try:
        with client:
            code: int = args.run(client, args)
    except AllxaiClientError as exc:
        # Whether the gateway answered (up, still loading its models) or not (is it running?).
        print(f"error: {exc}{unavailable_hint(exc, args.target, args.wait)}", file=sys.stderr)
        return 1
    except OSError as exc:  # an output file that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
