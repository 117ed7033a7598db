"""Durable storage of the core's records.

``records.py``: what a stable checkpoint makes forgettable (shared with the simulator's model).
``codec.py``: record <-> bytes. ``log.py``: the replica's segmented, hash-chained log, sealed with its
key once per group commit; ``ReplicaLog`` (load / append / sync), ``verify_log`` (offline check),
``wipe_state`` / ``is_recovering`` (``--recover``). Format and durability contract: docs/STORAGE.md.
"""
