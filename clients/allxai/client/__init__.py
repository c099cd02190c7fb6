"""The thin allxai client: grpcio, protobuf and numpy only (importing it never imports TensorFlow).

``Client`` blocks; ``AsyncClient`` is the same for asyncio code. Both take the options of ``ClientBase``
(deadlines, retries, TLS and mTLS, a bearer token, message sizes) and return the same typed results.
"""

from allxai.client._channel import MAX_MESSAGE_BYTES, ClientBase, Security, service_config
from allxai.client._results import (
    PICTURE_KINDS,
    AllxaiClientError,
    ClassifyResult,
    ExplainParams,
    ExplainResult,
    ModelDescription,
    SpecimenResult,
    json_safe,
)
from allxai.client.aio import AsyncClient
from allxai.client.sdk import Client

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PICTURE_KINDS",
    "AllxaiClientError",
    "AsyncClient",
    "ClassifyResult",
    "Client",
    "ClientBase",
    "ExplainParams",
    "ExplainResult",
    "ModelDescription",
    "Security",
    "SpecimenResult",
    "json_safe",
    "service_config",
]
