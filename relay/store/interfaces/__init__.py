"""The storage interface, one Protocol per domain; each has a memory and a Redis implementation.

Every method is a coroutine. Every stored key has a TTL. Implementations take the clock
(an IReactorTime) when built, so tests drive expiry with twisted.internet.task.Clock.
"""
