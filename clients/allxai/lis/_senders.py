"""The watcher's senders: the MLLP and FHIR threads for its lifetime, each on its own handle of the outbox."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from allxai.lis._sender_thread import SenderThread
from allxai.lis.commands import DEFAULT_OUTBOX_NAME
from allxai.lis.fhir_sender import FhirSender
from allxai.lis.mllp import MllpSender
from allxai.lis.outbox import Outbox

log = logging.getLogger("allxai.lis.watch")


def address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a pair; ``ValueError`` when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--mllp wants HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def running(sender: SenderThread | None) -> Iterator[None]:
    """Run ``sender``'s thread for the ``with`` block (none: nothing), then stop it and close its outbox."""
    if sender is None:
        yield
        return
    sender.start()
    try:
        yield
    finally:
        sender.stop()
        log.info("%s outbox at stop: %s", sender.kind.upper(), sender.outbox.depth(sender.kind))
        sender.outbox.close()


def fhir_sender(args: argparse.Namespace, outbox: Outbox | None) -> FhirSender | None:
    """The FHIR sender (None without ``--fhir-url``)."""
    if outbox is None:
        return None
    token = os.environ.get("ALLXAI_FHIR_TOKEN") or None
    return FhirSender(
        outbox, args.fhir_url, token=token, timeout=args.fhir_timeout, max_backoff=args.mllp_max_backoff
    )


def mllp_sender(args: argparse.Namespace, outbox: Outbox | None) -> MllpSender | None:
    """The MLLP sender (None without ``--mllp``)."""
    if outbox is None:
        return None
    host, port = address(args.mllp)
    return MllpSender(
        outbox,
        host,
        port,
        connect_timeout=args.mllp_connect_timeout,
        ack_timeout=args.mllp_ack_timeout,
        max_backoff=args.mllp_max_backoff,
    )


def open_outbox(args: argparse.Namespace, folder: Path, wanted: bool) -> Outbox | None:
    """One sender's handle on the outbox file (None when ``wanted`` is False). Each sender has its own, so
    each wakes on its own queue; both write the same file, and the metrics cover both kinds."""
    if not wanted:
        return None
    return Outbox(args.outbox or folder / DEFAULT_OUTBOX_NAME, metrics_file=args.metrics_file)
