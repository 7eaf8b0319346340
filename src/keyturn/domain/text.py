"""Free text from users (justifications, comments, tickets): validated and stored escaped.

Control characters (C0, DEL, C1) and line breaks are replaced by visible escapes (``\\n``,
``\\x1b``) before storage, so a justification can never forge a log line, move a terminal
cursor or hide text in a table.
"""

from __future__ import annotations

import unicodedata

from keyturn.domain.errors import InvalidInput

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_controls(text: str) -> str:
    """Replace control and format characters with visible escapes; backslashes are doubled."""
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def clean_text(value: str | None, *, field: str, max_length: int, required: bool) -> str | None:
    """Validate and escape a free-text field.

    Args:
        value: the raw text (None when absent).
        field: the field name for error messages.
        max_length: maximum length of the raw text, in characters.
        required: whether empty or whitespace-only text is an error.

    Returns:
        The escaped text, or None for an absent optional field.

    Raises:
        InvalidInput: required and empty/whitespace, or longer than ``max_length``.
    """
    if value is None or not value.strip():
        if required:
            raise InvalidInput(f"{field} is required and must not be blank", field=field)
        return None
    if len(value) > max_length:
        raise InvalidInput(
            f"{field} is {len(value)} characters long; the maximum is {max_length}", field=field
        )
    return escape_controls(value.strip())
