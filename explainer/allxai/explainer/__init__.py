"""LIME explanations of image classifications. Knows nothing of gRPC: it takes a predict function."""
