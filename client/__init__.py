"""Client-side code: end-to-end encryption helpers and (later) the chat client."""
