"""The one exception tree of Keyturn.

Every error Keyturn raises on purpose is a :class:`KeyturnError`. Adapters translate library
errors into this tree (``raise ... from exc``); the API maps it to RFC 9457 problem details in
``entrypoints/api/problems.py`` and the CLI maps it to messages and exit codes in
``entrypoints/cli_errors.py`` -- each in exactly one place.

::

    KeyturnError
    ├── InvalidInput          bad input from a caller; nothing was changed          (HTTP 400)
    ├── ConfigError           the configuration is invalid; names the key path   (startup refused)
    ├── Unauthenticated       no or unknown credentials                              (HTTP 401)
    ├── Forbidden             authenticated, but not allowed (e.g. self-approval)   (HTTP 403)
    ├── NotFound              no such request, grant, role or target                (HTTP 404)
    ├── Conflict              the state machine does not allow this transition      (HTTP 409)
    └── ProviderError         a provider could not grant, revoke or verify          (HTTP 502)
                              ``retryable`` says whether trying again may succeed

A broken audit chain is not an exception: ``verify`` returns a result naming the first bad event.

Exceptions are data: they carry a message and fields, they never log.
"""

from __future__ import annotations


class KeyturnError(Exception):
    """Base of every deliberate Keyturn error.

    Attributes:
        message: one sentence for a person, safe to show (no secrets).
        details: machine-readable context (JSON-serialisable values only).
    """

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(KeyturnError):
    """The caller's input is malformed or out of range; the state is unchanged."""


class TooLarge(InvalidInput):
    """The input is over a configured size limit (a body, a count); nothing was accepted."""


class ConfigError(KeyturnError):
    """The configuration is invalid. ``details['path']`` names the offending key path."""


class Unauthenticated(KeyturnError):
    """No credentials, or credentials that match no principal."""


class Forbidden(KeyturnError):
    """The principal is known but may not do this."""


class NotFound(KeyturnError):
    """The named object does not exist (or is not visible to the principal)."""


class Conflict(KeyturnError):
    """The object's current state does not allow the requested transition."""


class ProviderError(KeyturnError):
    """A provider failed to grant, revoke or verify a privilege.

    Args:
        message: what failed, without secrets.
        retryable: True when the same call may succeed later (network, server down).
    """

    def __init__(self, message: str, *, retryable: bool, **details: object) -> None:
        super().__init__(message, retryable=retryable, **details)
        self.retryable = retryable
