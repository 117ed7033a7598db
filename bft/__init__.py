"""bftchat's replica side and the code it shares with the client: the pure PBFT core (``core``), the
replicated chat application (``app``), durable storage (``storage``), the networked replica daemon
(``runtime``), the operator tools around it (``tools``: cluster launcher, keygen, bench, demo, fault
and attack drivers), the deterministic simulator (``sim``) and the Byzantine behaviours it shares
with fault injection (``faults``), and what every party uses: the wire format, keys and crypto
(``wire``, ``keys``, ``crypto``, ``replies``, ``pb``), the cluster config (``clusterconf``) and the
handshake and claim proofs of replica links and client sessions (``handshake``)."""
