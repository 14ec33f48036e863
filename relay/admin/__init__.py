"""The operators' listener: Prometheus metrics and health answers on an endpoint of their own.

`[admin] endpoint` (twistd option `--admin`) turns it on: `/metrics` (the Prometheus text
format), `/healthz` (the process serves) and `/readyz` (the store answers and the listeners
are bound). Each relay service builds its own registry, so several relays can run in one
process (tests) without sharing counters. Nothing in a metric names a key, a token or an
address: labels come from fixed sets.
"""

from relay.admin.requests import RequestStats

__all__ = ["RequestStats"]
