"""Watch a folder for cell images, as LIS exports drop them, and write each image's results next to it.

For ``<image>`` it writes ``<image>.json`` (the result), ``<image>.hl7`` (ORU^R01), ``<image>.fhir.json``
(a transaction Bundle), ``<image>.report.json`` (the record ``allxai lis finalize`` and ``correct``
read), with ``--explain`` also ``<image>.overlay.png``, and last ``<image>.done``, the marker. An image the
gateway rejects (corrupt, unsupported) gets ``<image>.error.json``, and reports that tell the LIS it failed
(HL7 OBX-11 X, FHIR cancelled). Every sub-folder is one specimen: one report for all its images (see
``allxai.lis._specimens``, and its ``manifest.json``). ``--lis-config`` gives the LIS team's codes and
identifier systems (``lis.toml``).

Durability: every file is written to a temporary name, synced and renamed into place, and the marker is
written only after all the others; an image without a valid marker is processed (again) on the next poll or
start, so a watcher killed at any point loses nothing and leaves no half-written output. An image is taken
only once its size and modification time have stayed unchanged for ``--settle`` seconds, and names that
writers use while copying (``.tmp``, ``.part``...) and hidden files are ignored. Failed calls that may succeed
later (gateway down, deadline, overload) are logged and retried after ``--retry-after`` seconds. An image the
gateway refuses because it lies outside the model's training domain (the gateway's ``refuse`` policy,
FAILED_PRECONDITION) is recorded like a rejected one; under the ``flag`` policy its reports carry the flag
(HL7 OBX-8 "A" and a note, FHIR interpretation EX and a note) and say it is not for diagnosis. ``--alpha``
picks the level of the prediction sets. A result that cannot be put into HL7 or FHIR (a file name too long for
an HL7 field, say) is recorded in ``<image>.error.json`` like a rejected image, and the watcher goes on;
header options that cannot be are refused at start-up. One lock file keeps a second watcher off the same
folder. Delete ``<image>.done`` to redo one.

Results are always preliminary (unreviewed AI output; a person makes them final in the LIS). The reports
carry allxai's request id as the filler order number (one per result), the image's file name, and the LIS's
order number only with ``--order-id-from stem``; the watcher knows no specimen id or imaging time, so it
sends none (the time of the analysis is sent as such: HL7 OBX-19, FHIR ``issued``). TLS and token options
are the ``allxai`` command's (``--tls``, ``--tls-ca``..., ``--token-file`` or ``$ALLXAI_TOKEN``).

With ``--mllp HOST:PORT`` each ORU^R01 is also queued in a durable outbox (``--outbox``, by default
``<folder>/.allxai-outbox.sqlite``) before the image's marker, and sent to the LIS over MLLP by a thread of
its own (``allxai.lis.mllp``): AA is done, AE/AR stay failed for a person (``allxai lis outbox``), timeouts
and lost connections are retried with backoff, in order (``--fhir-url``: each bundle is also POSTed to a
FHIR server from the same outbox, ``allxai.lis.fhir_post``). With ``--once`` the watcher then waits up to
``--drain-timeout`` seconds for the outbox to empty and exits 1 if messages are still pending.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from allxai.client import Client
from allxai.client import options as opts
from allxai.lis import _folder as files
from allxai.lis._image import Options
from allxai.lis._senders import address, fhir_sender, mllp_sender, open_outbox, running
from allxai.lis._watcher import PERMANENT_CODES, Watcher
from allxai.lis.commands import DEFAULT_OUTBOX_NAME
from allxai.lis.config import ConfigError, load_config
from allxai.lis.fhir_sender import FhirSender
from allxai.lis.hl7 import check_header, check_order_namespace
from allxai.lis.mllp import MllpSender

__all__ = ["PERMANENT_CODES", "Options", "Watcher", "main"]

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allxai watch",
        description="Classify (and explain) each new image in a folder; write HL7, FHIR and JSON next to it.",
    )
    p.add_argument("folder", type=Path, help="the folder the LIS exports images into")
    p.add_argument("--target", default="127.0.0.1:50051", help="the gateway, host:port")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between scans of the folder")
    p.add_argument("--settle", type=float, default=2.0, help="seconds an image must stay unchanged first")
    p.add_argument("--once", action="store_true", help="process what is there, then exit")
    p.add_argument(
        "--explain",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also explain each image with LIME and write the overlay",
    )
    opts.add_lime_options(p)
    opts.add_alpha_option(p)
    p.add_argument("--model", default="", help="model name (default: the server's)")
    p.add_argument("--model-version", type=int, default=None, help="model version (default: the newest)")
    p.add_argument(
        "--timeout", type=opts.positive_float, default=60.0, help="deadline of each classification, seconds"
    )
    p.add_argument(
        "--explain-timeout", type=opts.positive_float, default=600.0, help="deadline of each explanation"
    )
    p.add_argument("--retry-after", type=float, default=30.0, help="seconds before a failed call is retried")
    p.add_argument(
        "--max-attempts",
        type=opts.int_in(1, opts.INT32_MAX),
        default=3,
        help="with --once: attempts per image before giving up (it stays unmarked)",
    )
    hl7 = p.add_argument_group("report identifiers and HL7 header (results are always preliminary)")
    hl7.add_argument(
        "--order-id-from",
        choices=["none", "stem"],
        default="none",
        help="where the LIS's order (placer) number comes from: none (default), or the file name without "
        "its suffix (S123.png: S123), sent as HL7 OBR-2, FHIR basedOn and the gateway's specimen id",
    )
    hl7.add_argument(
        "--order-namespace",
        default="",
        help="namespace of that order number, e.g. the LIS's application name (default ALLXAI)",
    )
    hl7.add_argument("--sending-facility", default="", help="HL7 MSH-4")
    hl7.add_argument("--receiving-application", default="", help="HL7 MSH-5")
    hl7.add_argument("--receiving-facility", default="", help="HL7 MSH-6")
    hl7.add_argument(
        "--lis-config",
        type=Path,
        default=None,
        help="the LIS team's lis.toml: class codes, LOINC, FHIR identifier systems, the laboratory "
        "(default: the built-in one)",
    )
    mllp = p.add_argument_group("sending to the LIS over MLLP (the files are written either way)")
    mllp.add_argument("--mllp", default="", metavar="HOST:PORT", help="the LIS's MLLP listener")
    mllp.add_argument(
        "--outbox", type=Path, default=None, help=f"the outbox (<folder>/{DEFAULT_OUTBOX_NAME})"
    )
    mllp.add_argument("--mllp-connect-timeout", type=opts.positive_float, default=10.0, help="seconds")
    mllp.add_argument("--mllp-ack-timeout", type=opts.positive_float, default=30.0, help="seconds per ACK")
    mllp.add_argument("--mllp-max-backoff", type=opts.positive_float, default=60.0, help="longest retry wait")
    mllp.add_argument("--drain-timeout", type=float, default=60.0, help="with --once: wait for the outbox")
    mllp.add_argument("--metrics-file", type=Path, default=None, help="outbox depth, Prometheus text format")
    mllp.add_argument(
        "--fhir-url",
        default="",
        metavar="URL",
        help="also POST each FHIR transaction bundle to this FHIR base URL, from the outbox, with retries "
        "(bearer token from $ALLXAI_FHIR_TOKEN)",
    )
    mllp.add_argument("--fhir-timeout", type=opts.positive_float, default=30.0, help="seconds per POST")
    opts.add_security_options(p.add_argument_group("connection security"))
    p.add_argument("--log-level", default="INFO", help="Python logging level")
    return p


def _client(args: argparse.Namespace) -> Client:
    """The SDK client: ``ValueError`` or ``OSError`` for bad TLS or token settings."""
    return opts.client_from_args(args, timeout=args.timeout, explain_timeout=args.explain_timeout)


def _check_report_options(options: Options) -> None:
    """Raise when the HL7 header or order namespace cannot go into a strict message (checked once, here)."""
    check_header(
        sending_facility=options.sending_facility,
        receiving_application=options.receiving_application,
        receiving_facility=options.receiving_facility,
    )
    if options.order_namespace:
        check_order_namespace(options.order_namespace)


def _run(watcher: Watcher, senders: list[MllpSender | FhirSender | None], args: argparse.Namespace) -> int:
    code = watcher.run(args.interval, args.once)
    # With --once, wait for the LIS to take what was queued (unless a signal asked us to stop).
    if not args.once or watcher.stop.is_set():
        return code
    for sender in senders:
        if sender is not None and not sender.drain(args.drain_timeout):
            depth = sender.outbox.depth(sender.kind)
            log.error("the %s receiver did not take every message in time; outbox %s", sender.kind, depth)
            return 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Watch a folder for LIS cell images and write HL7, FHIR and JSON results beside them.

    Returns 0, or 1 when ``--once`` gave up on some images.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"allxai watch: {folder} is not a folder", file=sys.stderr)
        return 2
    options = Options(
        explain=args.explain,
        num_samples=args.samples,
        seed=args.seed,
        alpha=args.alpha,
        settle=args.settle,
        retry_after=args.retry_after,
        max_attempts=args.max_attempts if args.once else 0,
        order_id_from=args.order_id_from,
        order_namespace=args.order_namespace,
        sending_facility=args.sending_facility,
        receiving_application=args.receiving_application,
        receiving_facility=args.receiving_facility,
    )
    try:
        if args.lis_config is not None:
            options = replace(options, config=load_config(args.lis_config))
    except ConfigError as exc:
        print(f"allxai watch: {exc}", file=sys.stderr)
        return 2
    try:
        _check_report_options(options)
    except Exception as exc:  # noqa: BLE001  (hl7apy's errors: MaxLengthReached, ValidationError...)
        print(f"allxai watch: bad HL7 option ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 2
    try:
        if args.mllp:
            address(args.mllp)
        if args.fhir_url and not args.fhir_url.lower().startswith(("http://", "https://")):
            raise ValueError(f"--fhir-url wants an http(s) URL, not {args.fhir_url!r}")
        if not (args.mllp or args.fhir_url) and (args.outbox is not None or args.metrics_file is not None):
            raise ValueError("--outbox and --metrics-file need --mllp or --fhir-url")
    except ValueError as exc:
        print(f"allxai watch: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The image in hand is finished (its outputs and marker written) before the loop ends; a second
        # signal stops at once, which is safe too: an image without a marker is simply done again.
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("%s: stopping after the current image", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with files.folder_lock(folder) as locked:
            if not locked:
                print(f"allxai watch: another watcher is running on {folder}", file=sys.stderr)
                return 2
            removed = files.remove_leftovers(folder)
            if removed:
                log.info("removed %d temporary files left by an interrupted run", removed)
            try:
                client = _client(args)
            except (ValueError, OSError) as exc:  # bad TLS or token settings, unreadable PEM files
                print(f"allxai watch: {exc}", file=sys.stderr)
                return 2
            try:
                outbox = open_outbox(args, folder, bool(args.mllp))
                fhir_outbox = open_outbox(args, folder, bool(args.fhir_url))
            except (OSError, sqlite3.Error) as exc:
                print(f"allxai watch: cannot open the outbox: {exc}", file=sys.stderr)
                return 2
            sender, poster = mllp_sender(args, outbox), fhir_sender(args, fhir_outbox)
            with client, running(sender), running(poster):
                log.info(
                    "watching %s (gateway %s, explain %s)",
                    folder,
                    args.target,
                    "on" if args.explain else "off",
                )
                watcher = Watcher(folder, client, options, stop, outbox, fhir_outbox)
                return _run(watcher, [sender, poster], args)
    except KeyboardInterrupt:
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
