"""What lives on this machine: the relay home, the identity key and the contacts."""
