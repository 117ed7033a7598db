"""The chat client: the ``bftchat`` command line and the library under it.

``session``: streams to every replica, signed requests, f+1 (2f+1 for one-round reads) matching
verified replies, pushes. ``chat``: ``ChatClient``/``SyncChatClient``, the chat operations as typed
calls, live delivery. ``e2e``: end-to-end encryption and signed chat operations. ``local`` and
``history``: the local store (history, pinned keys, outbox, receipts). ``receipts``: proofs of
commit checkable offline. ``cli`` and ``chat_ui``: ``bftchat`` and its interactive ``chat``;
``output``: what both print. ``errors``: what the client reports, typed. Usage: docs/CLI.md; the
chat protocol: docs/CHAT.md.
"""
