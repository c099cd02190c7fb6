"""Memory before authentication: a flood of large Classify calls with a wrong token, against a real gateway.

Target (issue 15): 16 concurrent Classify calls of 63 MiB with a wrong token are each refused within 1 s,
the gateway's RSS grows by at most 200 MB meanwhile, and what it grew by is given back afterwards.

It starts ``python -m allxai.server`` (token auth, plaintext allowed on loopback, the benchmark's untrained
ALL-Net), waits until it serves, samples its RSS (``/proc/PID/status``, VmRSS) every 20 ms from a thread,
sends ``--calls`` Classify calls of ``--mib`` MiB at once with a wrong token (``--rounds`` times), then waits
``--settle`` seconds and reads the RSS again. Prints each round's slowest refusal, the codes, the RSS before,
its peak and after, and PASS/FAIL against the targets. ``--token right`` sends the accepted token instead
(the over-limit path: refused by size, after the body was read). Run by hand (about 1 min):

    .venv/bin/python bench/memory_flood.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
from gateway_bench import ensure_model
from gateway_procs import LISTENING, ROOT, start_gateway, wait_serving

from allxai.v1 import diagnosis_pb2 as pb

TOKEN = "flood-test-token"
CLASSIFY = "/allxai.v1.DiagnosisService/Classify"
MAX_REFUSAL_S = 1.0
MAX_GROWTH_MB = 200.0
#: "Given back": after the flood the RSS is within this of where it started.
MAX_KEPT_MB = 50.0


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler:
    """The peak RSS of a process, sampled every ``interval`` seconds from a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


async def flood(target: str, calls: int, size: int, token: str) -> list[tuple[float, str]]:
    """``calls`` Classify calls of ``size`` bytes at once; each call's seconds and status code."""
    options = [("grpc.max_send_message_length", size + (1 << 20))]
    payload = os.urandom(size)  # not an image: it must be refused before anyone looks at it
    # Serialised once, and sent as bytes: 16 serialisations of 63 MiB in the client would be timed too.
    request = pb.ClassifyRequest(image=pb.Image(data=payload)).SerializeToString()
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        classify = channel.unary_unary(
            CLASSIFY, request_serializer=None, response_deserializer=pb.ClassifyResponse.FromString
        )

        async def one() -> tuple[float, str]:
            started = time.perf_counter()
            try:
                await classify(request, metadata=metadata, timeout=60)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            return time.perf_counter() - started, code

        return list(await asyncio.gather(*(one() for _ in range(calls))))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--mib", type=float, default=63.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the RSS after")
    parser.add_argument("--token", choices=("wrong", "right"), default="wrong")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache" / "allnet224")
    args = parser.parse_args()
    base = ensure_model(args.cache)
    size = int(args.mib * (1 << 20))
    token = TOKEN if args.token == "right" else "not-the-token"
    with tempfile.TemporaryDirectory() as logs:
        settings = {
            "ALLXAI_AUTH_MODE": "token",
            "ALLXAI_AUTH_TOKENS": TOKEN,
            "ALLXAI_AUTH_ALLOW_PLAINTEXT_TOKENS": "true",
        }
        gateway = start_gateway("gateway", base, Path(logs), settings)
        try:
            target = gateway.address(LISTENING)
            asyncio.run(wait_serving(target))
            before = rss_mb(gateway.pid)
            print(
                f"{args.calls} Classify calls of {args.mib:g} MiB, {args.token} token, {args.rounds} rounds"
            )
            print(f"gateway RSS before: {before:.0f} MB")
            slowest = 0.0
            peak = before
            codes: Counter[str] = Counter()
            for round_ in range(args.rounds):
                sampler = Sampler(gateway.pid)
                results = asyncio.run(flood(target, args.calls, size, token))
                peak = max(peak, sampler.stop())
                worst = max(seconds for seconds, _ in results)
                slowest = max(slowest, worst)
                codes.update(code for _, code in results)
                print(f"  round {round_ + 1}: slowest refusal {worst:.2f} s; peak RSS so far {peak:.0f} MB")
            time.sleep(args.settle)
            after = rss_mb(gateway.pid)
            alive = gateway.proc.poll() is None
        finally:
            gateway.close()
    growth, kept = peak - before, after - before
    print(f"codes: {dict(codes)}; gateway alive afterwards: {alive}")
    print(
        f"RSS before {before:.0f} MB, peak {peak:.0f} MB (+{growth:.0f}), after {args.settle:g} s "
        f"{after:.0f} MB ({kept:+.0f})"
    )
    checks = {
        f"slowest refusal {slowest:.2f} s <= {MAX_REFUSAL_S} s": slowest <= MAX_REFUSAL_S,
        f"RSS growth {growth:.0f} MB <= {MAX_GROWTH_MB:.0f} MB": growth <= MAX_GROWTH_MB,
        f"RSS kept afterwards {kept:+.0f} MB <= {MAX_KEPT_MB:.0f} MB": kept <= MAX_KEPT_MB,
        "every call refused, gateway alive": alive and "OK" not in codes,
    }
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
