"""The networked replica: gRPC transport, TLS, cluster config, keys on disk, metrics."""
