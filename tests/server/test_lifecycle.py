"""The gateway as a real process: NOT_SERVING until the model answered, graceful stop on SIGTERM.

On SIGTERM the gateway reports NOT_SERVING, refuses new calls and lets every call in flight finish
within ``ALLXAI_GRACE_PERIOD_SECONDS``, then exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_flight(metrics_port: int, method: str) -> float:
    sample = f'allxai_in_flight_requests{{method="{method}"}} '
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(sample):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_then_sigterm_drains_in_flight_work(model_base: Path, cell_png: bytes, tmp_path: Path) -> None:
    port = free_port()
    metrics_port = free_port()
    env = {
        **os.environ,
        "ALLXAI_MODEL_BASE_PATH": str(model_base),
        "ALLXAI_PORT": str(port),
        "ALLXAI_HOST": "127.0.0.1",
        "ALLXAI_GRACE_PERIOD_SECONDS": "30",
        "ALLXAI_METRICS_PORT": str(metrics_port),
    }
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "allxai.server"], env=env, stdout=log, stderr=log)
    target = f"127.0.0.1:{port}"
    try:
        seen: list[int] = []
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and health_pb2.HealthCheckResponse.SERVING not in seen:
                try:
                    seen.append(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                except grpc.RpcError:
                    time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()
            # The port opens before the model loads (TensorFlow alone takes seconds to import), so
            # a prober sees NOT_SERVING first and SERVING only once the warm-up prediction answered.
            assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING
            assert seen[-1] == health_pb2.HealthCheckResponse.SERVING

            stub = pb_grpc.DiagnosisServiceStub(channel)
            options = pb.ExplainOptions(num_samples=3000, batch_size=64, seed=1)
            request = pb.StreamExplainRequest(
                request=pb.ExplainRequest(image=pb.Image(data=cell_png), options=options)
            )
            specimen = pb.ClassifySpecimenRequest(images=[pb.Image(data=cell_png)] * 300)
            events = []
            in_flight = []
            for event in stub.StreamExplain(request, timeout=120):
                if not events:
                    # Mid-explanation, with specimens in flight too: SIGTERM must let all of them finish.
                    in_flight = [stub.ClassifySpecimen.future(specimen, timeout=120) for _ in range(4)]
                    # Signal only once the gateway is handling all four (its own gauge says so).
                    until = time.monotonic() + 60
                    while _in_flight(metrics_port, "ClassifySpecimen") < 4 and time.monotonic() < until:
                        time.sleep(0.01)
                    assert not any(f.done() for f in in_flight), "the specimens finished before SIGTERM"
                    process.send_signal(signal.SIGTERM)
                events.append(event)
            assert events[-1].HasField("result"), "the in-flight explanation must finish"
            assert events[-1].result.explanation.num_samples == 3000
            assert [len(f.result().cells) for f in in_flight] == [300] * 4, "no in-flight call may fail"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)  # reaped here, not left for the garbage collector to warn about
        log.close()
    assert "signal received" in (tmp_path / "gateway.log").read_text()
