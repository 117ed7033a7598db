"""Replicated applications: the interface the core drives, a test key-value app, and the chat app."""
