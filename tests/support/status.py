"""What a gRPC error carries, read as a client would."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def bad_request(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no rich status details"
    details = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(details)
    return {v.field: v.description for v in details.field_violations}
