"""Hardening, second round: clean logs on cancellation, an exclusive port, reflection v1, plaintext tokens,
bounded identifiers, request ids, refusal logs and the drain, through the real gateway."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway
from tests.support.client import _on_loop
from tests.support.client import gateway_server as served


class Collect(logging.Handler):
    """Every record the root logger sees, kept for the test."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[Collect]:
    from allxai.server.logs import RequestIdFilter

    handler = Collect()
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _explain(cell_png: bytes, samples: int, **extra: Any) -> pb.ExplainRequest:
    options = pb.ExplainOptions(num_samples=samples, batch_size=10, seed=3)
    return pb.ExplainRequest(image=pb.Image(data=cell_png), options=options, **extra)


def _wait_until_idle(gateway: RunningGateway) -> None:
    """Wait until the gateway handles no Explain call, then let its loop finish and collect garbage."""
    registry = gateway.gateway.metrics.registry  # type: ignore[attr-defined]
    until = time.monotonic() + 60
    while time.monotonic() < until and any(
        registry.get_sample_value("allxai_in_flight_requests", {"method": m})
        for m in ("Explain", "StreamExplain")
    ):
        time.sleep(0.02)

    async def settle() -> None:
        for _ in range(20):  # loop turns (not time): the handlers' tasks end and drop their futures
            await asyncio.sleep(0)
        gc.collect()

    _on_loop(gateway, settle())


# --- item 6: no false ERROR lines -------------------------------------------------------------


def test_cancelled_and_timed_out_explanations_log_no_errors(
    gateway: RunningGateway, cell_png: bytes, logged: Collect
) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        for timeout in (0.3, 0.6, 1.0):
            with pytest.raises(grpc.RpcError) as info:
                stub.Explain(_explain(cell_png, 10000), timeout=timeout)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(3):
            stream = stub.StreamExplain(
                pb.StreamExplainRequest(request=_explain(cell_png, 10000)), timeout=60
            )
            assert next(stream).HasField("progress")  # running: cancel it mid-way
            stream.cancel()
    _wait_until_idle(gateway)
    errors = [f"{r.name}: {r.getMessage()}" for r in logged.records if r.levelno >= logging.ERROR]
    assert not errors


# --- item 5: the listening port is exclusive --------------------------------------------------


def test_a_second_gateway_on_a_port_in_use_fails_clearly(
    gateway: RunningGateway, model_base: Path, tmp_path: Path
) -> None:
    from allxai.server.app import create_server
    from allxai.server.settings import Settings

    taken = Settings(host="127.0.0.1", port=gateway.port, metrics_port=0)

    async def bind() -> None:
        create_server(taken, gateway.gateway.backend)  # type: ignore[attr-defined]

    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{gateway.port}: the port is in use"):
        _on_loop(gateway, bind())

    # And as a command: `allxai serve` on the session gateway's port exits 1 with that message.
    env = {
        **os.environ,
        "ALLXAI_MODEL_BASE_PATH": str(model_base),
        "ALLXAI_HOST": "127.0.0.1",
        "ALLXAI_PORT": str(gateway.port),
        "ALLXAI_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "allxai.server"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "gateway failed: cannot listen on" in done.stderr
    assert "serving" not in done.stderr
    # The first gateway still answers.
    with grpc.insecure_channel(gateway.target) as channel:
        info = pb_grpc.DiagnosisServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        assert info.model.name == "allnet"


# --- item 11: reflection v1 beside v1alpha ----------------------------------------------------

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def _reflect_v1(channel: grpc.Channel, request: Any, **kwargs: Any) -> list[Any]:
    from grpc_reflection.v1alpha import reflection_pb2

    # v1's messages are v1alpha's, field for field: the v1alpha classes read and write v1's bytes.
    call = channel.stream_stream(
        V1_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter([request]), timeout=10, **kwargs))


def test_reflection_v1_is_served_beside_v1alpha(gateway: RunningGateway) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(gateway.target) as channel:
        (v1,) = _reflect_v1(channel, listing)
        (alpha,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([listing]), timeout=10
        )
        names = {s.name for s in v1.list_services_response.service}
        assert names == {s.name for s in alpha.list_services_response.service}
        assert {
            "allxai.v1.DiagnosisService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        for symbol, package in (
            ("allxai.v1.DiagnosisService", "allxai.v1"),
            ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1"),
        ):
            ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
            (reply,) = _reflect_v1(channel, ask)
            assert not reply.HasField("error_response"), reply.error_response
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in reply.file_descriptor_response.file_descriptor_proto
            ]
            assert package in {f.package for f in files}
    # v1 needs the token like every other service but health.
    with (
        served(gateway, auth_mode="token", auth_tokens="t0ken", auth_allow_plaintext_tokens=True) as target,
        grpc.insecure_channel(target) as channel,
    ):
        with pytest.raises(grpc.RpcError) as info:
            _reflect_v1(channel, listing)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (reply,) = _reflect_v1(channel, listing, metadata=(("authorization", "Bearer t0ken"),))
        assert "allxai.v1.DiagnosisService" in {s.name for s in reply.list_services_response.service}


# --- item 4: bearer tokens over plaintext -----------------------------------------------------


def test_token_auth_over_plaintext_is_refused_at_start_unless_allowed_then_warned(
    gateway: RunningGateway, logged: Collect, tmp_path: Path
) -> None:
    from allxai.server.security import check_transport
    from allxai.server.settings import Settings
    from tests.support.client import make_pki

    base: dict[str, Any] = {"auth_mode": "token", "auth_tokens": "t0ken"}
    with pytest.raises(ValueError, match="bearer tokens in cleartext"), served(gateway, **base):
        pass
    assert not [r for r in logged.records if "plaintext" in r.getMessage()]
    with served(gateway, auth_allow_plaintext_tokens=True, **base):
        pass
    (warning,) = [r for r in logged.records if "plaintext" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "t0ken" not in warning.getMessage()
    # With TLS, or another mode, nothing to refuse or warn about.
    pki = make_pki(tmp_path)
    check_transport(
        Settings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, metrics_port=0, **base)
    )
    check_transport(Settings(metrics_port=0))
    assert len([r for r in logged.records if "plaintext" in r.getMessage()]) == 1


# --- items 2 and 8: bounded identifiers, request ids kept or refused ----------------------------


def test_identifier_rules() -> None:
    from allxai.server import identifiers
    from allxai.server.errors import InvalidInput
    from allxai.server.logs import request_id_var

    def field_of(call: Any) -> str:
        with pytest.raises(InvalidInput) as info:
            call()
        (violation,) = info.value.violations
        return violation.field

    for kept in ("LIS:123", "order/42.a_b-c", "x" * 128, "!~"):
        assert identifiers.request_id(kept) == kept == request_id_var.get()
    for bad in ("x" * 129, "LIS 123", "LIS:1\n2", "LIS:1\t", "läb-1", "a\x00b"):
        assert field_of(lambda bad=bad: identifiers.request_id(bad)) == "request_id"
    meta = [("authorization", "Bearer x"), ("X-Request-Id", "LIS:456")]
    assert identifiers.request_id("", meta) == "LIS:456"  # metadata when the message has none
    assert identifiers.request_id("LIS:1", meta) == "LIS:1"  # the message's wins
    assert field_of(lambda: identifiers.request_id("", [("x-request-id", "a b")])) == "x-request-id"
    # begin() gives refusals an id from the start; without any id the call keeps that one.
    made = identifiers.begin([])
    assert len(made) == 32 and identifiers.request_id("", []) == made
    assert identifiers.begin([("x-request-id", "bad id")]) != "bad id"

    identifiers.check_ids("S" * 256, [("image.image_id", "cell 1 — Zelle.png")])
    assert field_of(lambda: identifiers.check_ids("S" * 257, [])) == "specimen_id"
    assert field_of(lambda: identifiers.check_ids("S\n1", [])) == "specimen_id"
    many = [("images[0].image_id", "ok"), ("images[1].image_id", "a\x1b[31m")]
    assert field_of(lambda: identifiers.check_ids("", many)) == "images[1].image_id"


def test_ids_through_the_gateway_kept_or_refused_naming_the_field(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    from tests.support.status import bad_request

    image = pb.Image(data=cell_png)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        kept = stub.Classify(pb.ClassifyRequest(image=image, request_id="LIS:123"), timeout=30)
        assert kept.request_id == "LIS:123"
        by_metadata = stub.Classify(
            pb.ClassifyRequest(image=image), timeout=30, metadata=(("x-request-id", "LIS:124/a.b"),)
        )
        assert by_metadata.request_id == "LIS:124/a.b"
        made = stub.Classify(pb.ClassifyRequest(image=image), timeout=30)
        assert len(made.request_id) == 32

        def refused(call: Any, request: Any, **kwargs: Any) -> dict[str, str]:
            with pytest.raises(grpc.RpcError) as info:
                list(call(request, timeout=30, **kwargs))  # a stream answers its status at the end
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return bad_request(info.value)

        huge = "S" * (1 << 20)
        classify = stub.Classify.with_call  # (response, call): a pair list() can take, like a stream
        assert "request_id" in refused(classify, pb.ClassifyRequest(image=image, request_id="LIS 123"))
        assert "x-request-id" in refused(
            classify, pb.ClassifyRequest(image=image), metadata=(("x-request-id", "x" * 129),)
        )
        assert "specimen_id" in refused(classify, pb.ClassifyRequest(image=image, specimen_id=huge))
        odd = pb.Image(data=cell_png, image_id="cell\n2")
        assert "image.image_id" in refused(classify, pb.ClassifyRequest(image=odd))
        specimen = pb.ClassifySpecimenRequest(images=[image, odd])
        assert "images[1].image_id" in refused(stub.ClassifySpecimen.with_call, specimen)
        assert "specimen_id" in refused(stub.Explain.with_call, _explain(cell_png, 50, specimen_id=huge))
        stream = pb.StreamExplainRequest(request=_explain(cell_png, 50, request_id="a\nb"))
        assert "request_id" in refused(stub.StreamExplain, stream)


# --- item 7: refusals and streamed explanations leave log lines ---------------------------------


def test_refusals_and_streamed_explanations_are_logged_with_the_request_id(
    gateway: RunningGateway, cell_png: bytes, logged: Collect
) -> None:
    bad = pb.Image(data=b"not an image")
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Classify(pb.ClassifyRequest(image=bad, request_id="LIS:701"), timeout=30)
        with pytest.raises(grpc.RpcError):  # refused before the message's id is read: the metadata's
            stub.Classify(pb.ClassifyRequest(image=bad), timeout=30, metadata=(("x-request-id", "LIS:702"),))
        stream = pb.StreamExplainRequest(request=_explain(cell_png, 40, request_id="LIS:703"))
        assert list(stub.StreamExplain(stream, timeout=60))[-1].HasField("result")
    with (
        served(gateway, auth_mode="token", auth_tokens="t0ken", auth_allow_plaintext_tokens=True) as target,
        grpc.insecure_channel(target) as channel,
    ):
        wrong = (("authorization", "Bearer nope"), ("x-request-id", "LIS:704"))
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.DiagnosisServiceStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=30, metadata=wrong
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def line(request_id: str, start: str) -> logging.LogRecord:
        (found,) = [
            r
            for r in logged.records
            if r.request_id == request_id and r.getMessage().startswith(start)  # type: ignore[attr-defined]
        ]
        return found

    assert line("LIS:701", "refused Classify: INVALID_ARGUMENT: image.data").levelno == logging.INFO
    assert line("LIS:702", "refused Classify: INVALID_ARGUMENT").levelno == logging.INFO
    assert line("LIS:703", "explained (streamed):").levelno == logging.INFO
    denied = line("LIS:704", "refused GetModelInfo: UNAUTHENTICATED")
    assert denied.levelno == logging.WARNING and "nope" not in denied.getMessage()


def test_refusal_lines_are_rate_limited_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    import grpc as g

    from allxai.server.refusals import RefusalLog

    now = [0.0]
    refusals = RefusalLog(rate=2.0, burst=3, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="allxai.server.refusals")
    for _ in range(10):
        refusals.refused("/allxai.v1.DiagnosisService/Classify", g.StatusCode.INVALID_ARGUMENT, "bad")
    # Authentication failures have their own budget: a flood of bad input cannot hide them.
    refusals.refused("/allxai.v1.DiagnosisService/Classify", g.StatusCode.UNAUTHENTICATED, "no token")
    assert [r.levelname for r in caplog.records] == ["INFO"] * 3 + ["WARNING"]
    now[0] += 1.0  # two lines' worth of budget comes back
    refusals.refused("/allxai.v1.DiagnosisService/Explain", g.StatusCode.RESOURCE_EXHAUSTED, "busy")
    assert caplog.records[-1].getMessage() == (
        "refused Explain: RESOURCE_EXHAUSTED: busy (7 similar refusals not logged)"
    )
    refusals.refused("/allxai.v1.DiagnosisService/Explain", g.StatusCode.RESOURCE_EXHAUSTED, "busy")
    refusals.refused("/allxai.v1.DiagnosisService/Explain", g.StatusCode.RESOURCE_EXHAUSTED, "busy")
    assert len(caplog.records) == 6


# --- item 9: the drain lets explanations in flight finish ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gauge(metrics_port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_lets_four_explanations_finish_within_the_grace_and_refuses_new_calls(
    model_base: Path, cell_png: bytes, tmp_path: Path
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from allxai.server.settings import Settings

    port, metrics_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLXAI_")}
    # A grace no busy machine can outrun: the test is about the drain letting work in flight finish, not
    # about how fast four explanations run (the default's fit with Kubernetes is checked in tests/deploy).
    grace = 600.0
    env.update(
        ALLXAI_MODEL_BASE_PATH=str(model_base),
        ALLXAI_PORT=str(port),
        ALLXAI_HOST="127.0.0.1",
        ALLXAI_METRICS_PORT=str(metrics_port),
        ALLXAI_GRACE_PERIOD_SECONDS=str(grace),
    )
    defaults = Settings()
    assert defaults.max_concurrent_explanations == 2  # so of the four below, two run and two wait
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "allxai.server"], env=env, stdout=log, stderr=log)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            until = time.monotonic() + 120
            status = None
            while status != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < until:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.SERVING, (tmp_path / "gateway.log").read_text()

            stub = pb_grpc.DiagnosisServiceStub(channel)
            request = pb.ExplainRequest(
                image=pb.Image(data=cell_png),
                options=pb.ExplainOptions(num_samples=1000, batch_size=1, seed=1),
            )
            explanations = [stub.Explain.future(request, timeout=120) for _ in range(4)]
            until = time.monotonic() + 60
            while _gauge(metrics_port, "allxai_queued_explanations") < 2 and time.monotonic() < until:
                time.sleep(0.01)
            assert not any(f.done() for f in explanations), "the explanations finished before SIGTERM"
            process.send_signal(signal.SIGTERM)
            # New calls are refused while the four finish.
            until = time.monotonic() + 60
            refused = None
            while refused is None and time.monotonic() < until:
                try:
                    stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
                except grpc.RpcError as exc:
                    refused = exc
            # gRPC refuses a call that arrives once shutdown has begun with UNAVAILABLE, and one caught at
            # the moment it begins (its headers read, the server stopping) with CANCELLED: both are refusals.
            assert refused is not None
            assert refused.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), refused
            assert [f.result().explanation.num_samples for f in explanations] == [1000] * 4
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)  # reaped here, not left for the garbage collector to warn about
        log.close()
    text = (tmp_path / "gateway.log").read_text()
    assert f"draining for up to {grace:.1f} s" in text
