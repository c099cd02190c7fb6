"""Memory before authentication: refused callers and over-limit requests, through the real gateway.

The memory itself (RSS) is measured by ``bench/memory_flood.py``; here: the right codes, and a gateway
that keeps serving afterwards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from allxai.server.intake import ENVELOPE_BYTES, receive_limits, server_receive_limit
from allxai.server.settings import Settings
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import RunningGateway
from tests.support.client import gateway_server as served

MIB = 1 << 20
CLASSIFY = "/allxai.v1.DiagnosisService/Classify"
TOKEN = (("authorization", "Bearer t0ken"),)
WRONG = (("authorization", "Bearer not-it"),)
AUTH = {"auth_mode": "token", "auth_tokens": "t0ken", "auth_allow_plaintext_tokens": True}


def test_receive_limits_are_sized_per_method() -> None:
    settings = Settings(metrics_port=0)
    limits = receive_limits(settings)
    assert limits[CLASSIFY] == settings.max_image_bytes + ENVELOPE_BYTES
    assert limits["/allxai.v1.DiagnosisService/Explain"] == limits[CLASSIFY]
    assert limits["/allxai.v1.DiagnosisService/ClassifySpecimen"] == settings.max_message_bytes
    # The server-wide limit is what the largest method needs: no longer twice the image limit.
    assert server_receive_limit(settings) == max(limits.values()) < 2 * settings.max_image_bytes
    assert (
        server_receive_limit(Settings(metrics_port=0, max_image_bytes=100 * MIB))
        == 100 * MIB + ENVELOPE_BYTES
    )


def _classify(channel: grpc.Channel, size: int, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    # Pre-serialised bytes: the server sees the same message without the client building it per call.
    call = channel.unary_unary(CLASSIFY, request_serializer=None, response_deserializer=None)
    body = pb.ClassifyRequest(image=pb.Image(data=b"\0" * size)).SerializeToString()
    try:
        call(body, metadata=metadata, timeout=120)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_large_unauthenticated_and_over_limit_calls_are_refused_and_the_gateway_serves_on(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    settings = Settings(metrics_port=0)
    over_all = server_receive_limit(settings) + MIB  # over the server-wide limit: the C core refuses it
    over_classify = settings.max_image_bytes + ENVELOPE_BYTES + 1  # under it, over Classify's own
    assert over_classify < server_receive_limit(settings)
    options = [("grpc.max_send_message_length", 128 * MIB)]
    with served(gateway, **AUTH) as target, grpc.insecure_channel(target, options=options) as channel:
        with ThreadPoolExecutor(8) as pool:
            wrong = list(pool.map(lambda _: _classify(channel, 40 * MIB, WRONG), range(8)))
        assert wrong == [grpc.StatusCode.UNAUTHENTICATED] * 8
        assert _classify(channel, 40 * MIB, ()) == grpc.StatusCode.UNAUTHENTICATED
        assert _classify(channel, over_all, TOKEN) == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub = pb_grpc.DiagnosisServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(pb.ClassifyRequest(image=pb.Image(data=b"\0" * over_classify)), metadata=TOKEN)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Classify accepts at most" in (info.value.details() or "")
        # A streaming method refuses a wrong token before reading its request too.
        explain = pb.ExplainRequest(image=pb.Image(data=b"\0" * (8 * MIB)))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.StreamExplain(pb.StreamExplainRequest(request=explain), metadata=WRONG, timeout=60))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # ... and the gateway still answers the callers it should.
        reply = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png)), metadata=TOKEN, timeout=60)
        assert reply.classification.label
        specimen = pb.ClassifySpecimenRequest(images=[pb.Image(data=cell_png)] * 3)
        assert len(stub.ClassifySpecimen(specimen, metadata=TOKEN, timeout=60).cells) == 3
