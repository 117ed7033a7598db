"""The networked replica and the tools that operate it.

The replica daemon (``bftchat-replica``): ``main``, ``node`` (drives the core), ``server`` (client
gRPC), ``peers`` and ``handshake`` (replica links), ``tls``, ``metrics``, ``logs``, ``pauses``.
Operator tools: ``keygen``, ``clusterconf`` (the cluster config), ``cluster`` (the local launcher),
``faultctl`` (fault injection), ``bench``, ``preload``, ``attack``, ``demo``.
"""
