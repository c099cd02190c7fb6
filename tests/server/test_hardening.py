"""Overload, metrics, logs, authorisation switches and the audit trail, through the real gateway."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from allxai.server.audit import AuditLog
from allxai.server.logs import JsonFormatter, RequestIdFilter
from allxai.server.security import Authorizer
from allxai.server.settings import Settings
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway
from tests.support.client import _on_loop
from tests.support.client import gateway_server as served


def _explain(cell_png: bytes, samples: int, **extra: Any) -> pb.ExplainRequest:
    options = pb.ExplainOptions(num_samples=samples, batch_size=50, seed=3)
    return pb.ExplainRequest(image=pb.Image(data=cell_png), options=options, **extra)


# --- overload ---------------------------------------------------------------------------------


def test_overload_is_refused_at_once_and_explain_cannot_starve_classify(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    with (
        served(gateway, max_concurrent_explanations=1, max_queued_explanations=1) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.DiagnosisServiceStub(channel)
        # One explanation runs (its first progress message proves it holds the slot), one waits.
        running = stub.StreamExplain(pb.StreamExplainRequest(request=_explain(cell_png, 4000)), timeout=120)
        first = next(running)
        assert first.HasField("progress")
        queued = stub.Explain.future(_explain(cell_png, 100), timeout=120)
        time.sleep(0.3)
        assert not queued.done()

        # A third is refused at once, not queued behind the others.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Explain(_explain(cell_png, 100), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1 explain calls are running and 1 waiting" in refused.value.details()
        assert time.monotonic() - started < 5.0  # at once: not after the explanations (many seconds)

        # Classify goes ahead of the explanation's queued model batches.
        classified = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png)), timeout=30)
        assert classified.classification.label
        events = list(running)
        assert events and events[-1].HasField("result"), "the explanation was still running"
        assert queued.result().explanation.num_samples == 100


# --- metrics ----------------------------------------------------------------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
        return text


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prometheus_metrics_count_calls_codes_batches_and_explanations(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    port = gateway.gateway.metrics_port  # type: ignore[attr-defined]
    before = _scrape(port)
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png)), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Classify(pb.ClassifyRequest(image=pb.Image(data=b"not an image")), timeout=30)
        stub.Explain(_explain(cell_png, 120), timeout=60)
    after = _scrape(port)

    def grew(sample: str, by: float = 1) -> bool:
        return _value(after, sample) - _value(before, sample) >= by

    assert grew('allxai_requests_total{code="OK",method="Classify"}')
    assert grew('allxai_requests_total{code="INVALID_ARGUMENT",method="Classify"}')
    assert grew('allxai_request_seconds_count{code="OK",method="Explain"}')
    assert grew('allxai_backend_seconds_count{lane="interactive",operation="predict",outcome="ok"}')
    assert grew('allxai_backend_seconds_count{lane="bulk",operation="predict",outcome="ok"}') or grew(
        'allxai_backend_seconds_count{lane="bulk",operation="compose",outcome="ok"}'
    )
    assert grew('allxai_backend_batch_size_count{operation="predict"}')
    assert grew("allxai_explanation_samples_sum", 120)
    assert grew("allxai_explanation_seconds_count")
    assert 'allxai_in_flight_requests{method="Classify"} 0.0' in after
    assert "allxai_queued_explanations 0.0" in after
    assert "allxai_backend_ready 1.0" in after


# --- logs -------------------------------------------------------------------------------------

SPECIMEN = "SPECIMEN-7f3a-SENTINEL"
IMAGE_ID = "PATIENT-DOE-JANE-SENTINEL"
TOKEN = "TOKEN-9c1e-SENTINEL"


def test_logs_carry_request_ids_but_never_images_identifiers_or_secrets(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    image = pb.Image(data=cell_png, image_id=IMAGE_ID)
    bad = pb.Image(data=b"\x89PNG\r\n\x1a\n" + b"SENTINEL-BYTES" * 20, image_id=IMAGE_ID)
    try:
        with (
            served(gateway, auth_mode="token", auth_tokens=TOKEN, auth_allow_plaintext_tokens=True) as target,
            grpc.insecure_channel(target) as ch,
        ):
            stub = pb_grpc.DiagnosisServiceStub(ch)
            auth = (("authorization", f"Bearer {TOKEN}"),)
            common = {"specimen_id": SPECIMEN, "request_id": "req-visible-1"}
            stub.Classify(pb.ClassifyRequest(image=image, **common), timeout=30, metadata=auth)
            stub.ClassifySpecimen(
                pb.ClassifySpecimenRequest(images=[image, image], **common), timeout=30, metadata=auth
            )
            stub.Explain(_explain(cell_png, 60, **common), timeout=60, metadata=auth)
            for request in (
                pb.ClassifyRequest(image=bad, **common),
                pb.ClassifyRequest(image=image, **common),
            ):
                # The second carries a wrong token that must not be echoed either.
                token = TOKEN if request.image.data == bad.data else TOKEN + "-wrong"
                with pytest.raises(grpc.RpcError):
                    stub.Classify(request, timeout=30, metadata=(("authorization", f"Bearer {token}"),))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = "\n".join(lines)
    records = [json.loads(line) for line in lines]
    assert any(r["request_id"] == "req-visible-1" and "classified" in r["message"] for r in records)
    for secret in (SPECIMEN, IMAGE_ID, TOKEN, "SENTINEL-BYTES", cell_png[20:40].hex(), repr(cell_png[:40])):
        assert secret not in text, secret


# --- authorisation switches -------------------------------------------------------------------


def test_reflection_needs_the_token_too_and_odd_request_ids_are_refused(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with (
        served(gateway, auth_mode="token", auth_tokens="t0ken", auth_allow_plaintext_tokens=True) as target,
        grpc.insecure_channel(target) as ch,
    ):
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            list(reflect.ServerReflectionInfo(iter([request]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", "Bearer t0ken"),)
        replies = list(reflect.ServerReflectionInfo(iter([request]), timeout=5, metadata=auth))
        names = {s.name for s in replies[0].list_services_response.service}
        assert "allxai.v1.DiagnosisService" in names

        stub = pb_grpc.DiagnosisServiceStub(ch)
        image = pb.Image(data=cell_png)
        kept = stub.Classify(
            pb.ClassifyRequest(image=image, request_id="lis-42.a"), timeout=30, metadata=auth
        )
        assert kept.request_id == "lis-42.a"
        # An id that could forge a log line is refused, not replaced (tests/server/test_hardening2.py).
        forged = "x\n2026-01-01 ERROR forged line"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(pb.ClassifyRequest(image=image, request_id=forged), timeout=30, metadata=auth)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_needs_no_token_and_health_and_reflection_can_be_switched_off(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    from allxai.server.app import Gateway

    with (
        served(gateway, auth_mode="token", auth_tokens="t0ken", auth_allow_plaintext_tokens=True) as target,
        grpc.insecure_channel(target) as ch,
    ):
        # This factory-made server has no health servicer: UNIMPLEMENTED, not UNAUTHENTICATED.
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.DiagnosisServiceStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def start(**overrides: Any) -> Gateway:
        settings = Settings(host="127.0.0.1", port=0, metrics_port=0, **overrides)
        gw = Gateway(settings, gateway.gateway.backend.__dict__["_inner"])  # type: ignore[attr-defined]
        await gw.server.start()
        await gw._set_health(health_pb2.HealthCheckResponse.SERVING)
        return gw

    gw = _on_loop(gateway, start(auth_mode="token", auth_tokens="t0ken", auth_allow_plaintext_tokens=True))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        _on_loop(gateway, gw.server.stop(0))

    gw = _on_loop(gateway, start(enable_health=False, enable_reflection=False))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as info:
                list(
                    reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                        iter([request]), timeout=5
                    )
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert (
                pb_grpc.DiagnosisServiceStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model.name
            )
    finally:
        _on_loop(gateway, gw.server.stop(0))


def test_authorizer_rules(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nalpha\n\n beta \n")
    settings = Settings(auth_mode="token", auth_tokens_file=tokens, auth_tokens="gamma", metrics_port=0)
    authorizer = Authorizer.from_settings(settings)
    assert sorted(authorizer.tokens) == [b"alpha", b"beta", b"gamma"]
    assert "alpha" not in repr(authorizer)
    for good in ("alpha", "beta", "gamma"):
        authorizer.check([("authorization", f"Bearer {good}")], {})
    from allxai.server.errors import PermissionDenied, Unauthenticated

    for bad in ([], [("authorization", "Bearer nope")], [("authorization", "Basic alpha")]):
        with pytest.raises(Unauthenticated):
            authorizer.check(bad, {})
    names = Authorizer("client_cert", (), frozenset({"lis-a"}))
    names.check([], {"x509_common_name": [b"lis-a"]})
    with pytest.raises(PermissionDenied):
        names.check([], {"x509_common_name": [b"lis-b"]})
    with pytest.raises(Unauthenticated):
        names.check([], {})
    with pytest.raises(ValueError, match="needs tokens"):
        Authorizer.from_settings(Settings(auth_mode="token", metrics_port=0))
    with pytest.raises(ValueError, match="needs ALLXAI_TLS_CLIENT_CA_FILE"):
        Authorizer.from_settings(Settings(auth_mode="client_cert", metrics_port=0))
    # The secret is held as a SecretStr: settings printed in a log show no token.
    assert "gamma" not in repr(settings) and "gamma" not in str(settings.model_dump())


# --- audit trail ------------------------------------------------------------------------------


def test_every_answer_is_audited_with_hashes_not_images(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    audit = AuditLog(path, "always")
    with served(gateway, audit=audit) as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DiagnosisServiceStub(channel)
        image = pb.Image(data=cell_png, image_id=IMAGE_ID)
        stub.Classify(pb.ClassifyRequest(image=image, specimen_id=SPECIMEN, request_id="r1"), timeout=30)
        stub.ClassifySpecimen(
            pb.ClassifySpecimenRequest(images=[image] * 3, specimen_id=SPECIMEN), timeout=30
        )
        explained = stub.Explain(_explain(cell_png, 80, specimen_id=SPECIMEN), timeout=60)
        streamed = list(
            stub.StreamExplain(pb.StreamExplainRequest(request=_explain(cell_png, 60)), timeout=60)
        )
        with pytest.raises(grpc.RpcError):
            stub.Classify(pb.ClassifyRequest(image=pb.Image(data=b"junk")), timeout=30)
    audit.close()
    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["kind"] for r in records] == ["classify", "classify_specimen", "explain", "explain"]
    digest = hashlib.sha256(cell_png).hexdigest()
    first = records[0]
    assert first["request_id"] == "r1" and first["specimen_id"] == SPECIMEN
    assert first["image_sha256"] == digest and first["model"] == {"name": "allnet", "version": 1}
    assert abs(sum(first["scores"].values()) - 1) < 1e-4 and "time" in first
    assert [c["image_sha256"] for c in records[1]["cells"]] == [digest] * 3
    assert records[2]["explanation"]["seed"] == explained.explanation.seed == 3
    assert records[2]["explanation"]["num_samples"] == 80
    assert records[3]["explanation"]["num_samples"] == streamed[-1].result.explanation.num_samples
    assert IMAGE_ID not in text and cell_png[20:40].hex() not in text


@pytest.mark.parametrize("policy", ["never", "always"])
def test_audit_log_survives_rotation_and_concurrent_writers(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, policy)  # type: ignore[arg-type]

    def write(worker: int) -> None:
        for i in range(200):
            log.write({"worker": worker, "i": i, "pad": "x" * (i % 50)})
            if worker == 0 and i == 100:
                os.replace(path, tmp_path / "audit.jsonl.1")  # what logrotate does

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    log.close()
    rotated = (tmp_path / "audit.jsonl.1").read_text().splitlines()
    current = path.read_text().splitlines()
    records = [json.loads(line) for line in rotated + current]  # every line whole
    assert len(records) == 1600 and len(current) > 0 and len(rotated) > 0
    assert {(r["worker"], r["i"]) for r in records} == {(w, i) for w in range(8) for i in range(200)}


@pytest.mark.parametrize(
    ("policy", "interval", "expected"), [("always", 1.0, 5), ("interval", 3600, 1), ("never", 1.0, 0)]
)
def test_audit_fsync_policy_and_group_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, interval: float, expected: int
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    log = AuditLog(tmp_path / "a.jsonl", policy, interval)  # type: ignore[arg-type]
    for i in range(5):
        log.write({"i": i})
    log.close()  # "interval" syncs what is left at close
    assert len(synced) == expected
    with pytest.raises(RuntimeError, match="closed"):
        log.write({"i": 99})
    if policy == "always":
        # Many writers at once share flushes: never more fsyncs than records, and every record whole.
        synced.clear()

        def slow_fsync(fd: int) -> None:  # a disk that takes 20 ms to flush
            time.sleep(0.02)
            synced.append(fd)
            real(fd)

        monkeypatch.setattr(os, "fsync", slow_fsync)
        log = AuditLog(tmp_path / "b.jsonl", "always")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: log.write({"i": i}), range(200)))
        log.close()
        assert 1 <= len(synced) < 60, len(synced)  # one flush per record would be 200
        lines = (tmp_path / "b.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["i"] for line in lines) == list(range(200))


def test_the_health_port_serves_health_alone_in_plaintext_beside_a_tls_port(
    model_base: Path, tmp_path: Path
) -> None:
    from tests.conftest import GatewayThread, gateway_settings
    from tests.support.client import free_port, make_pki

    pki = make_pki(tmp_path)
    port = free_port()
    settings = gateway_settings(
        model_base, health_port=port, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
    )
    runner = GatewayThread(settings)
    runner.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "allxai.v1.DiagnosisService", "allxai.liveness"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.DiagnosisServiceStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        runner.stop()
