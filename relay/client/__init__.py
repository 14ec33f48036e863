"""The relay client: a mailbox (Zax) client, identity and contacts, encrypted records and the
live transfer protocol, and (on top) the `relay` console command."""
