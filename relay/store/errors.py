"""Errors a store raises; the HTTP layer maps each to one status code."""


class StoreError(Exception):
    """Base class of store errors."""


class StoreUnavailable(StoreError):
    """The back end failed or did not answer within the operation timeout (HTTP 500)."""


class StoreFull(StoreError):
    """A cap was reached: the mailbox, the store's byte budget, or a file quota (HTTP 507).

    Nothing was stored by the operation that raised it.
    """


class StoreRateLimited(StoreError):
    """A client wrote more than its rate allows; it may try again later (HTTP 429).

    Nothing was stored by the operation that raised it.
    """
