"""Generated protobuf and gRPC code for the allxai.v1 API (``make proto``)."""
