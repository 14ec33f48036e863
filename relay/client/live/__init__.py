"""The live transfer: rendezvous (join, PAKE over /channel, staple), encrypted records,
the transfer protocol (protocol.py, with its send and receive ends) and its file I/O."""
