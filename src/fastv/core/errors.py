"""One exception type, so callers can catch every refusal of fastv in one place."""

from __future__ import annotations


class FastVError(ValueError):
    """A setting, input or model that fastv cannot prune correctly; the message says what to change."""


class UnsupportedModelError(FastVError):
    """The model's family has no adapter; the message lists the supported families."""
