"""The live rendezvous: channels over HTTP (PAKE messages and key confirmation), then a TCP
listener that staples the two peers' connections together and moves bytes between them."""
