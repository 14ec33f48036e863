"""`python -m relay.client.cli` runs the `relay` command."""

from relay.client.cli import main

main()
