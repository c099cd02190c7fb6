"""The gRPC floor of the gateway benchmark: a grpc.aio server whose Classify does nothing.

It answers every Classify with an empty ``ClassifyResponse`` at once, in its own process, with the gateway's
message limits; what a call to it costs is what any Python gRPC gateway costs before doing any work (the
client, the loopback transport, the server's C core and its asyncio handler). Prints
``listening on port N`` once bound, as the gateway does.
"""

from __future__ import annotations

import asyncio

import grpc

from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class Nothing(pb_grpc.DiagnosisServiceServicer):
    """Classify answers at once; the other methods stay unimplemented."""

    async def Classify(  # noqa: N802 (gRPC's method name)
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        return pb.ClassifyResponse()


async def serve() -> None:
    server = grpc.aio.server(options=OPTIONS)
    pb_grpc.add_DiagnosisServiceServicer_to_server(Nothing(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on port {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
