"""relay: an end-to-end encrypted dead-drop mailbox and live rendezvous relay."""

__version__ = "0.1.0"
