"""The pure PBFT replica: inputs (messages, requests, timer firings, persisted records) in, outputs out.

Nothing in this package reads a clock, touches a socket or a file, or draws a random number; "now"
is an argument. The gRPC runtime and the deterministic simulator drive the same objects.
"""
