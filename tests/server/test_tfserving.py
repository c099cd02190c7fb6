"""The TensorFlow Serving backend against a server speaking TensorFlow Serving's real protocol.

The partner (``tests/support/tfserving_fake.py``) runs the real SavedModel behind the real
``tensorflow.serving`` messages; the failure tests run it as its own process and kill it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from allxai.explainer.perturb import Composition
from allxai.server.backends.base import ModelSpec
from allxai.server.backends.embedded import EmbeddedBackend
from allxai.server.backends.tfserving import TFServingBackend
from allxai.server.backends.tfserving_rpc import translate
from allxai.server.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
)
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import INPUT_SIZE, REPO, GatewayThread, gateway_settings
from tests.support.tfserving_fake import FakeTFServing


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFound),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable),
        (grpc.StatusCode.FAILED_PRECONDITION, BackendUnavailable),
        (grpc.StatusCode.INVALID_ARGUMENT, BackendError),
        (grpc.StatusCode.INTERNAL, BackendError),
    ],
)
def test_tfserving_codes_become_ours(code: grpc.StatusCode, error: type) -> None:
    raw = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="it said so")
    translated = translate(raw, "allnet version 1")
    assert type(translated) is error
    assert "allnet version 1" in translated.message and "it said so" in translated.message


async def test_backend_matches_the_embedded_model(model_base: Path) -> None:
    fake = FakeTFServing(model_base, labels={"allnet": {"stable": 1}}, max_batch_size=8)
    port = await fake.start()
    backend = TFServingBackend(f"127.0.0.1:{port}", ["allnet"], batch_size=8, max_in_flight=2)
    embedded = EmbeddedBackend(model_base)
    try:
        await backend.start()
        await embedded.start()
        info = await backend.resolve(ModelSpec())
        local = await embedded.resolve(ModelSpec())
        assert (info.name, info.version, info.class_names, info.input_size) == (
            local.name,
            local.version,
            local.class_names,
            local.input_size,
        )
        assert info.has_composition and info.available_versions == (1,)
        assert info.card_json == local.card_json

        # 20 images, the server takes at most 8: three requests, answers in order.
        before = fake.requests["Predict"]
        images = _images(20)
        remote = await backend.predict(info, images, timeout=30)
        assert fake.requests["Predict"] - before == 3
        # The rows hold the domain score too: TensorFlow Serving serves it from the SavedModel as it is.
        assert info.domain is not None and remote.shape == (20, info.row_width)
        np.testing.assert_allclose(remote, await embedded.predict(local, images, None), rtol=1e-5, atol=1e-6)

        # The compose signature, with image, fill and segments sent once.
        image = images[0]
        fill = np.full_like(image, 128)
        segments = (np.arange(INPUT_SIZE * INPUT_SIZE).reshape(INPUT_SIZE, INPUT_SIZE) // 200).astype(
            np.int32
        )
        masks = np.random.default_rng(1).integers(0, 2, (30, int(segments.max()) + 1), dtype=np.uint8)
        composition = Composition(image, fill, segments, masks)
        composed = await backend.predict_composed(info, composition, timeout=30, lane="bulk")
        expected = await embedded.predict_composed(local, composition, None)
        np.testing.assert_allclose(composed, expected, atol=1e-6)

        assert (await backend.resolve(ModelSpec(version_label="stable"))).version == 1
        with pytest.raises(ModelNotFound, match="no version label 'canary'"):
            await backend.resolve(ModelSpec(version_label="canary"))
        with pytest.raises(ModelNotFound, match="Specific"):
            await backend.resolve(ModelSpec(version=9))
        with pytest.raises(ModelNotFound, match="not served here"):
            await backend.resolve(ModelSpec(name="nope"))
        assert await backend.check()
    finally:
        await backend.close()
        await embedded.close()
        await fake.stop()


async def test_requests_beyond_grpcs_default_4_mib_go_through(model_base: Path) -> None:
    fake = FakeTFServing(model_base)
    port = await fake.start()
    backend = TFServingBackend(f"127.0.0.1:{port}", ["allnet"], batch_size=1000, max_message_bytes=64 << 20)
    try:
        await backend.start()
        info = await backend.resolve(ModelSpec())
        images = _images(800, seed=7)  # one PredictRequest of 5.5 MB
        assert images.nbytes > 4 << 20
        before = fake.requests["Predict"]
        probabilities = await backend.predict(info, images, timeout=60)
        assert probabilities.shape == (800, info.row_width) and fake.requests["Predict"] - before == 1
    finally:
        await backend.close()
        await fake.stop()


async def test_classify_has_connections_of_its_own(model_base: Path) -> None:
    """Interactive predictions never share a connection with explanation batches (no queueing behind them
    on the wire); bulk calls keep theirs."""
    fake = FakeTFServing(model_base)
    port = await fake.start()
    backend = TFServingBackend(f"127.0.0.1:{port}", ["allnet"])
    try:
        await backend.start()
        info = await backend.resolve(ModelSpec())
        fake.peers.clear()
        await backend.predict(info, _images(2, seed=3), timeout=60, lane="interactive")
        await backend.predict(info, _images(2, seed=4), timeout=60, lane="bulk")
        await backend.predict(info, _images(2, seed=5), timeout=60, lane="interactive")
        interactive, bulk, again = fake.peers
        assert interactive == again and interactive != bulk
    finally:
        await backend.close()
        await fake.stop()


async def test_requests_are_balanced_across_servers(model_base: Path) -> None:
    fakes = [FakeTFServing(model_base), FakeTFServing(model_base)]
    ports = [await fake.start() for fake in fakes]
    # What a headless Service's DNS name resolves to: several addresses; round_robin uses all.
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    backend = TFServingBackend(target, ["allnet"], batch_size=4)
    try:
        await backend.start()
        info = await backend.resolve(ModelSpec())
        for fake in fakes:
            fake.requests.clear()
        for _ in range(12):
            await backend.predict(info, _images(1), timeout=10)
        assert all(fake.requests["Predict"] >= 3 for fake in fakes), [f.requests for f in fakes]
    finally:
        await backend.close()
        for fake in fakes:
            await fake.stop()


async def test_a_slow_server_meets_the_deadline_and_an_absent_one_is_unavailable(model_base: Path) -> None:
    fake = FakeTFServing(model_base)
    port = await fake.start()
    backend = TFServingBackend(f"127.0.0.1:{port}", ["allnet"])
    try:
        await backend.start()
        info = await backend.resolve(ModelSpec())
        fake.delay = 3.0
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await backend.predict(info, _images(1), timeout=0.4)
        # Back before the slow answer (3 s) would have come; how soon after 0.4 s depends on the load.
        assert time.monotonic() - started < 2.5
    finally:
        await backend.close()
        await fake.stop()

    nowhere = TFServingBackend(f"127.0.0.1:{port}", ["allnet"], retries=2)
    nowhere.connect()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        await nowhere.predict(info, _images(1), timeout=5)
    assert time.monotonic() - started < 5
    assert not await nowhere.check()
    await nowhere.close()


async def test_mtls_to_the_model_server(model_base: Path, tmp_path: Path) -> None:
    from allxai.server.backends.tfserving_rpc import TLSFiles
    from tests.support.client import SERVER_NAME, make_pki

    pki = make_pki(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    fake = FakeTFServing(model_base)
    port = await fake.start(credentials=credentials)
    good = TFServingBackend(
        f"localhost:{port}",
        ["allnet"],
        tls=TLSFiles(pki.ca, pki.client_cert, pki.client_key, SERVER_NAME),
    )
    no_client_cert = TFServingBackend(
        f"127.0.0.1:{port}", ["allnet"], retries=0, tls=TLSFiles(pki.ca), timeout=3
    )
    try:
        await good.start()
        info = await good.resolve(ModelSpec())
        assert (await good.predict(info, _images(2), timeout=10)).shape == (2, info.row_width)
        no_client_cert.connect()
        with pytest.raises(BackendUnavailable):
            await no_client_cert.resolve(ModelSpec())
    finally:
        await good.close()
        await no_client_cert.close()
        await fake.stop()


# --- the gateway over a model server that comes, dies, returns and slows down -----------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _model_server(model_base: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.tfserving_fake",
            "--base",
            str(model_base),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("READY"), line
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def _health(channel: grpc.Channel, service: str = "") -> int:
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
    except grpc.RpcError:
        return -1
    return int(reply.status)


def _histogram(metrics: object, outcome: str) -> tuple[float, float]:
    """Count and sum of the gateway's interactive predict calls with this outcome."""
    text = metrics.text()  # type: ignore[attr-defined]
    labels = f'lane="interactive",operation="predict",outcome="{outcome}"'
    values = {}
    for kind in ("count", "sum"):
        for line in text.splitlines():
            if line.startswith(f"allxai_backend_seconds_{kind}{{{labels}}} "):
                values[kind] = float(line.rsplit(" ", 1)[1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def _wait_health(channel: grpc.Channel, status: int, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if _health(channel) == status:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"health did not become {status} within {seconds} s")


@pytest.mark.slow
def test_gateway_rides_out_the_model_server_coming_dying_returning_and_slowing(
    model_base: Path, cell_png: bytes
) -> None:
    port = _free_port()
    settings = gateway_settings(
        model_base,
        backend="tfserving",
        tfserving_target=f"127.0.0.1:{port}",
        tfserving_models=["allnet"],
        tfserving_timeout_seconds=5,
    )
    runner = GatewayThread(settings)
    running = runner.start(wait_serving=False)
    channel = grpc.insecure_channel(running.target)
    stub = pb_grpc.DiagnosisServiceStub(channel)
    request = pb.ClassifyRequest(image=pb.Image(data=cell_png))
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        # Absent at start: listening, NOT_SERVING, calls refused as UNAVAILABLE; alive all the same.
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        assert _health(channel, "allxai.liveness") == serving
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        with _model_server(model_base, port) as server:
            _wait_health(channel, serving, 10)
            assert stub.Classify(request, timeout=5).classification.label

            # Killed under load: every call ends within its deadline; the failures are UNAVAILABLE.
            outcomes: list[tuple[str, float]] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        stub.Classify(request, timeout=3)
                        code = "OK"
                    except grpc.RpcError as exc:
                        code = exc.code().name
                    outcomes.append((code, time.monotonic() - started))

            workers = [threading.Thread(target=load) for _ in range(8)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            server.kill()
            time.sleep(2.0)
            stop.set()
            for worker in workers:
                worker.join(timeout=10)
            assert not any(worker.is_alive() for worker in workers), "a call hung"
            codes = {code for code, _ in outcomes}
            assert "OK" in codes and "UNAVAILABLE" in codes, codes
            assert codes <= {"OK", "UNAVAILABLE"}, codes
            assert max(seconds for _, seconds in outcomes) < 3.5
            _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING, 5)

        # Restarted: serving again within 5 s of the model server listening.
        with _model_server(model_base, port) as server:
            back = time.monotonic()
            _wait_health(channel, serving, 5)
            while True:
                try:
                    stub.Classify(request, timeout=2)
                    break
                except grpc.RpcError:
                    assert time.monotonic() - back < 5
                    time.sleep(0.05)
            assert time.monotonic() - back < 5

            # Slow: the caller's deadline is honoured, by the gateway too: its model call (2 s on
            # the slow server) ends with the caller's 0.5 s deadline.
            server.send_signal(signal.SIGUSR1)
            assert server.stdout is not None and server.stdout.readline().strip() == "SLOW"
            metrics = running.gateway.metrics  # type: ignore[attr-defined]
            failed = metrics.backend_latency.labels("predict", "interactive", "error")
            count, total = _histogram(metrics, "error")
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(request, timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 1.9  # before the slow answer (2 s) would have come
            until = time.monotonic() + 5
            while _histogram(metrics, "error")[0] == count and time.monotonic() < until:
                time.sleep(0.02)
            new_count, new_total = _histogram(metrics, "error")
            assert new_count == count + 1 and new_total - total < 1.5, failed
    finally:
        channel.close()
        runner.stop()
