"""The one map from Keyturn errors to CLI messages and exit codes.

====  =====================================================
code  meaning
====  =====================================================
0     success (a pending request is a success: it was filed)
1     unexpected error, provider failure
2     bad input or usage (also Typer/Click usage errors)
3     not authenticated (no or unknown token)
4     forbidden
5     not found
6     conflict (state does not allow it)
7     the policy denied the access request
8     the audit chain does not verify (``audit verify``)
9     the Keyturn server cannot be reached
10    configuration invalid
====  =====================================================
"""

from __future__ import annotations

from keyturn.domain import errors as e
from keyturn.entrypoints.cli_client import ServerUnreachable

EXIT_DENIED = 7
EXIT_AUDIT_BROKEN = 8

_CODES: list[tuple[type[e.KeyturnError], int]] = [
    (e.InvalidInput, 2),
    (e.Unauthenticated, 3),
    (e.Forbidden, 4),
    (e.NotFound, 5),
    (e.Conflict, 6),
    (ServerUnreachable, 9),
    (e.ConfigError, 10),
    (e.ProviderError, 1),
]


def exit_code(exc: e.KeyturnError) -> int:
    """The exit code for an error (1 if not listed)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return 1
