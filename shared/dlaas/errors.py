"""Failure classes every adapter maps its errors to, so the bus knows what to retry."""


class DlaasError(Exception):
    """Base of the errors dlaas raises on purpose."""


class TransientError(DlaasError):
    """The side effect may succeed later (service down, timeout, not yet available): retry."""


class PermanentError(DlaasError):
    """Retrying cannot help (unknown DID, no permission, invalid input): dead-letter or fail."""


class MessageRejectedError(DlaasError):
    """A message that cannot be accepted as it is (malformed, unknown type, too large)."""
