"""bftchat replica side: PBFT core, chat application, storage and runtime."""
