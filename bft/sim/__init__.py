"""Deterministic discrete-event simulator: virtual time, seeded randomness, Byzantine adversaries.

It drives the same ``Replica`` objects as the gRPC runtime. ``python -m bft.sim --help``.
"""
