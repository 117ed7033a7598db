"""The replica daemon (``bftchat-replica``); the operator tools are in ``bft.tools``.

``main`` (the command), ``node`` (drives the core), ``server`` (client gRPC), ``peers`` (replica
links), ``tls``, ``metrics``, ``logs``, ``pauses``, and ``faultctl`` (the Admin endpoint that applies
admin-signed fault commands when started with ``--allow-fault-injection``).

The cluster config and the handshake proofs, shared with clients, are ``bft.clusterconf`` and
``bft.handshake``. Their old names here (``keygen``,
``clusterconf``, ``cluster``, ``bench``, ``preload``, ``attack``, ``demo``, ``handshake``, and the
CLI names of ``faultctl``) stay importable for existing scripts.
"""
