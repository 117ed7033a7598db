"""bftchat's replica side and the code it shares with the client: the pure PBFT core (``core``), the
replicated chat application (``app``), durable storage (``storage``), the networked replica and the
operator tools (``runtime``), the deterministic simulator (``sim``), and the wire format, keys and
crypto every party uses (``wire``, ``keys``, ``crypto``, ``replies``, ``pb``)."""
