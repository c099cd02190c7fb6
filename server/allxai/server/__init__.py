"""The allxai gRPC gateway (the ``server`` extra)."""
