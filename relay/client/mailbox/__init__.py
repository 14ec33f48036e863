"""The mailbox: the Zax client (client.py, codec.py, pow.py), our formats inside it
(inbox.py) and dead drops through the file API (drop.py)."""
