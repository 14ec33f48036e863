"""The Zax-compatible mailbox API: session handshake and /command."""
