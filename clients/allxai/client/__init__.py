"""The thin allxai client: grpcio, protobuf and numpy only (importing it never imports TensorFlow)."""

from allxai.client.sdk import (
    AllxaiClientError,
    ClassifyResult,
    Client,
    ExplainResult,
    ModelDescription,
    SpecimenResult,
)

__all__ = [
    "AllxaiClientError",
    "ClassifyResult",
    "Client",
    "ExplainResult",
    "ModelDescription",
    "SpecimenResult",
]
