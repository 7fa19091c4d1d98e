"""Failure classes every adapter maps its errors to, so the bus knows what to retry."""


class DlaasError(Exception):
    """Base of the errors dlaas raises on purpose."""


class TransientError(DlaasError):
    """The side effect may succeed later (service down, timeout, not yet available): retry."""


class PermanentError(DlaasError):
    """Retrying cannot help (unknown DID, no permission, invalid input): dead-letter or fail."""


class MessageRejectedError(DlaasError):
    """A message that cannot be accepted as it is (malformed, unknown type, too large)."""


# PostgreSQL's "try the transaction again": deadlock detected, serialization failure
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def is_transaction_conflict(exc: BaseException) -> bool:
    """Whether a database error is a conflict between concurrent transactions (retry it).

    Two replicas updating overlapping rows in one batch each can deadlock in PostgreSQL;
    the database aborts one of them, which succeeds when run again.
    """
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRY_SQLSTATES
