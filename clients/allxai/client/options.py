"""Command-line options the allxai commands share: connection security, and numbers checked against ranges.

``allxai`` (classify, explain, specimen, info), ``allxai loadtest`` and ``allxai watch`` take the same
security flags (``--tls``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``,
``--token-file`` or ``$ALLXAI_TOKEN``, ``--plaintext-token``) from :func:`add_security_options`, and turn
them into one :class:`~allxai.client._channel.Security` with :func:`security_from_args`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from allxai.client._channel import Security
from allxai.client.sdk import Client

#: The environment variable a bearer token comes from when no ``--token-file`` is given.
TOKEN_ENV = "ALLXAI_TOKEN"

#: The largest value of a protobuf int32 (LIME samples, top-k): larger ones cannot even be put in a request.
INT32_MAX = 2**31 - 1

#: The largest explanation seed the gateway takes (numpy seeds are 32-bit).
SEED_MAX = 2**32 - 1


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer from ``low`` to ``high``, with a clear message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}: {text!r}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type`` for a finite number above 0 (deadlines, intervals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def level(text: str) -> float:
    """An argparse ``type`` for a miscoverage level ``alpha``: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 0.05): {text!r}")
    return value


def add_alpha_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--alpha``, the miscoverage level of the prediction sets (one the model was calibrated for)."""
    parser.add_argument(
        "--alpha",
        type=level,
        default=None,
        help="miscoverage level of the prediction sets, one the model was calibrated for (its card's "
        "conformal levels, see allxai info); the set then covers 1 - alpha (default: the server's, 0.05)",
    )


def add_lime_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--samples`` and ``--seed`` of an explanation, checked against what a request can carry."""
    parser.add_argument(
        "--samples",
        type=int_in(0, INT32_MAX),
        default=0,
        help="LIME samples (default 0: the server's, 1000)",
    )
    parser.add_argument(
        "--seed",
        type=int_in(0, SEED_MAX),
        default=None,
        help=f"LIME random seed, 0-{SEED_MAX} (default: the server draws one)",
    )


def add_security_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the TLS and token flags to ``parser`` (a parser or one of its argument groups)."""
    g = parser
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument(
        "--tls-ca", metavar="FILE", type=Path, help="CA certificate (PEM) of the gateway; implies --tls"
    )
    g.add_argument(
        "--tls-cert", metavar="FILE", type=Path, help="client certificate (PEM) for mTLS; implies --tls"
    )
    g.add_argument("--tls-key", metavar="FILE", type=Path, help="key (PEM) of the client certificate")
    g.add_argument("--tls-server-name", default="", metavar="NAME", help="name in the gateway's certificate")
    g.add_argument(
        "--token-file", metavar="FILE", type=Path, help=f"bearer token file (default: ${TOKEN_ENV}, if set)"
    )
    g.add_argument(
        "--plaintext-token", action="store_true", help="allow sending the token without TLS (local gateways)"
    )


def security_from_args(args: argparse.Namespace) -> Security:
    """The checked security settings of parsed flags; ``ValueError`` or ``OSError`` (token file) otherwise."""
    if args.token_file is not None:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    security = Security(
        tls=args.tls,
        root_certificates=args.tls_ca,
        certificate_chain=args.tls_cert,
        private_key=args.tls_key,
        server_name=args.tls_server_name,
        token=token,
        allow_plaintext_token=args.plaintext_token,
    )
    security.check()
    return security


def client_from_args(args: argparse.Namespace, **options: Any) -> Client:
    """The SDK client of parsed flags: ``--target``, ``--model``, ``--model-version``, the security flags, and
    ``options`` (deadlines, retries...); ``ValueError`` or ``OSError`` for bad TLS or token settings."""
    return Client(
        args.target,
        model=args.model,
        version=args.model_version,
        version_label=getattr(args, "version_label", None),
        **options,
        **asdict(security_from_args(args)),
    )


def prepare_output(parser: argparse.ArgumentParser, path: Path | None, flag: str) -> None:
    """Make ``path``'s folder now, and exit (status 2) when the file cannot be written there.

    Checked before any call, so a long run does not end by failing to write its results.
    """
    if path is None or str(path) == "-":
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"{flag}: cannot make the folder {path.parent}: {exc.strerror or exc}")
    if path.is_dir():
        parser.error(f"{flag}: {path} is a folder")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        parser.error(f"{flag}: cannot write {path}")
