"""The load tester's command line: options, their parsing and validation, into one ``LoadSettings``."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allxai.client import Security
from allxai.client import options as opts

#: The default target, as the ``allxai`` command's.
DEFAULT_TARGET = "127.0.0.1:50051"

#: Calls when neither a count nor a duration is given: every run stops by itself.
DEFAULT_TOTAL = 200

#: Hard cap on one level's time in count mode; in duration mode the cap is the duration plus one deadline.
DEFAULT_MAX_TIME = 600.0

#: Mix names and the RPCs they call.
METHODS = {"classify": "Classify", "explain": "Explain", "specimen": "ClassifySpecimen"}

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class UsageError(ValueError):
    """Settings or inputs that make the run impossible; reported in one line, exit status 2."""


@dataclass(frozen=True)
class LoadSettings:
    """Everything a run needs, parsed and checked."""

    target: str
    images: list[Path]
    total: int | None
    duration: float | None
    levels: list[int]
    rate: float | None
    mix: dict[str, float]
    explain_samples: int
    specimen_size: int
    deadline: float
    warmup: int
    seed: int
    max_time: float
    model: str
    connections: int
    security: Security
    output_format: str
    output: Path | None
    quiet: bool
    bins: int

    def describe(self, n_images: int) -> dict[str, Any]:
        """The run's settings for the report's header (never the token)."""
        return {
            "target": self.target,
            "images": n_images,
            "mix": ",".join(f"{k}={v:g}" for k, v in self.mix.items()),
            "total": self.total,
            "duration_s": self.duration,
            "rate": self.rate,
            "levels": self.levels,
            "deadline_s": self.deadline,
            "warmup": self.warmup,
            "seed": self.seed,
            "explain_samples": self.explain_samples,
            "tls": self.security.uses_tls,
        }


def parse_seconds(text: str) -> float:
    """Seconds from ``"30"``, ``"30s"``, ``"500ms"``, ``"2m"`` or ``"1h"``; positive."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 500ms, 2m)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return seconds


def parse_mix(text: str) -> dict[str, float]:
    """``"classify=0.9,explain=0.1"`` into weights that sum to 1; names from ``METHODS``."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip().lower()
        if name not in METHODS:
            raise argparse.ArgumentTypeError(
                f"unknown method {name!r} in mix; choose from {', '.join(METHODS)}"
            )
        if name in weights:
            raise argparse.ArgumentTypeError(f"{name} appears twice in the mix")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r} in mix") from None
        if not weight >= 0 or weight == float("inf"):
            raise argparse.ArgumentTypeError(f"weight of {name} must be a finite number >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise argparse.ArgumentTypeError("the mix needs a positive weight")
    return {name: weight / total for name, weight in weights.items() if weight > 0}


def parse_levels(text: str) -> list[int]:
    """``"1,2,4,8"`` into concurrency levels, each at least 1."""
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be at least 1")
    return levels


#: Counts (calls, images, connections): at least 1, and within a protobuf int32 where they go into a request.
_positive_int = opts.int_in(1, opts.INT32_MAX)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``allxai loadtest`` shows the same options)."""
    p = argparse.ArgumentParser(
        prog="allxai loadtest",
        description="Load-test the allxai gateway: latency percentiles, throughput, status codes.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files or folders (searched recursively)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway host:port (default %(default)s)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "-n", "--total", metavar="N", type=_positive_int, help=f"calls per level (default {DEFAULT_TOTAL})"
    )
    stop.add_argument(
        "-z", "--duration", metavar="TIME", type=parse_seconds, help="time per level, e.g. 30s or 2m"
    )
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "-c",
        "--concurrency",
        metavar="N",
        type=_positive_int,
        help="calls in flight (default 4; with -r: at most, 64)",
    )
    load.add_argument(
        "--sweep",
        metavar="LEVELS",
        type=parse_levels,
        help="concurrency levels, one report each, e.g. 1,2,4,8",
    )
    p.add_argument(
        "-r",
        "--rate",
        metavar="PER_S",
        type=opts.positive_float,
        help="open loop: start this many calls per second",
    )
    p.add_argument(
        "--mix",
        metavar="WEIGHTS",
        type=parse_mix,
        default={"classify": 1.0},
        help="e.g. classify=0.9,explain=0.1",
    )
    p.add_argument(
        "--explain-samples", metavar="N", type=_positive_int, default=50, help="LIME samples per Explain (50)"
    )
    p.add_argument(
        "--specimen-size", metavar="N", type=_positive_int, default=8, help="images per ClassifySpecimen (8)"
    )
    p.add_argument(
        "-t",
        "--timeout",
        "--deadline",
        dest="deadline",
        metavar="TIME",
        type=parse_seconds,
        default=30.0,
        help="deadline per call (default 30s)",
    )
    p.add_argument(
        "--warmup",
        metavar="N",
        type=opts.int_in(0, opts.INT32_MAX),
        default=0,
        help="calls before measuring, not counted (default 0)",
    )
    p.add_argument(
        "--seed",
        type=opts.int_in(0, opts.SEED_MAX),
        default=0,
        help=f"seed of the mix and of Explain, 0-{opts.SEED_MAX} (default 0)",
    )
    p.add_argument(
        "--max-time",
        metavar="TIME",
        type=parse_seconds,
        help="hard cap on each level's time (default: the duration plus one deadline, or 10m with -n)",
    )
    p.add_argument("--model", default="", help="model name (default: the server's)")
    p.add_argument(
        "--connections", metavar="N", type=_positive_int, default=1, help="gRPC connections (default 1)"
    )
    opts.add_security_options(p.add_argument_group("connection security"))
    p.add_argument("--format", dest="output_format", choices=("text", "json", "csv"), default="text")
    p.add_argument(
        "-o", "--output", metavar="FILE", type=Path, help="write the report here (default: stdout)"
    )
    p.add_argument(
        "--buckets", dest="bins", metavar="N", type=_positive_int, default=10, help="histogram bins (10)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> LoadSettings:
    """Parse and check the command line; on bad options exit with status 2 and a message, like argparse."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.rate is not None and a.sweep is not None:
        parser.error("--sweep sweeps concurrency in closed loop; it cannot be combined with --rate")
    try:
        security = opts.security_from_args(a)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    opts.prepare_output(parser, a.output, "--output")
    total = a.total if a.total is not None or a.duration is not None else DEFAULT_TOTAL
    if a.max_time is not None:
        max_time = a.max_time
    elif a.duration is not None:
        max_time = a.duration + a.deadline
    else:
        max_time = DEFAULT_MAX_TIME
    # open loop: -c only bounds the calls in flight, so its default is generous
    levels = a.sweep or [a.concurrency or (64 if a.rate else 4)]
    return LoadSettings(
        target=a.target,
        images=a.images,
        total=total,
        duration=a.duration,
        levels=levels,
        rate=a.rate,
        mix=a.mix,
        explain_samples=a.explain_samples,
        specimen_size=a.specimen_size,
        deadline=a.deadline,
        warmup=a.warmup,
        seed=a.seed,
        max_time=max_time,
        model=a.model,
        connections=a.connections,
        security=security,
        output_format=a.output_format,
        output=a.output,
        quiet=a.quiet,
        bins=a.bins,
    )
