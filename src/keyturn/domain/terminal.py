"""Neutralising recorded terminal output before it reaches a viewer's terminal.

A recording is kept byte-faithful, including whatever escape sequences the session printed. Some
of those attack whoever replays it: OSC sequences set the window title or write the clipboard
(OSC 0/2, OSC 52) or make links (OSC 8); DCS/APC/PM/SOS strings drive terminal features; device
status and attribute queries (``CSI 6 n``, ``CSI c``), window operations (``CSI … t``) and mode
reports make the terminal *type* replies into the player's input; mouse-reporting modes do the
same with every click. Sequence grammar: ECMA-48 (5th edition) §5.3 to 5.6 and the xterm control
sequences list.

:class:`TerminalFilter` keeps what only draws (text, SGR colours, cursor movement, erasing,
scrolling regions, the alternate screen, line-drawing character sets) and drops everything
else. It is stateful so a sequence split across two recording events is judged whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: CSI finals that only move the cursor, erase, scroll or set colours (ECMA-48 §8.3).
_SAFE_CSI_FINALS = frozenset("@ABCDEFGHJKLMPSTXdfmrsu")
#: DEC private / ANSI modes that only affect drawing: 1 (cursor keys), 4 (insert), 7 (wrap),
#: 12 (blink), 25 (cursor visible), 47/1047/1049 (alternate screen), 2004 (bracketed paste).
_SAFE_MODES = frozenset({"?1", "4", "?7", "?12", "?25", "?47", "?1047", "?1048", "?1049", "?2004"})
#: two-character escapes that only draw: save/restore cursor, index, reverse index, next line,
#: keypad modes; and G0/G1 character-set designations (``ESC ( 0`` line drawing, ``ESC ( B``).
_SAFE_ESC = frozenset({"7", "8", "D", "E", "M", "=", ">", "(0", "(B", ")0", ")B", "(A", ")A"})
#: the longest unfinished sequence carried over to the next chunk; beyond it the ESC is dropped
CARRY_MAX = 4096

_TOKEN = re.compile(
    r"""
    (?P<csi>\x1b\[(?P<params>[0-?]*)(?P<inter>[\x20-\x2f]*)(?P<final>[@-~]))
  | (?P<string>\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\))  # OSC, DCS, SOS, PM, APC to BEL/ST
  | (?P<esc>\x1b(?![\[\]PX^_])[\x20-\x2f]*[\x30-\x7e])
  | (?P<lone>\x1b)
  | (?P<control>[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f\x80-\x9f])
    """,
    re.VERBOSE | re.DOTALL,
)


_STRING_START = re.compile(r"\x1b[\]PX^_]")
#: parameters of the drawing-only CSI finals: digits, ``;`` and ``:`` (SGR 38:2::r:g:b), no
#: private prefix
_PLAIN_PARAMS = re.compile(r"[0-9;:]{0,64}")


def _keep(match: re.Match[str]) -> str:
    if match.group("csi"):
        return match.group(0) if _safe_csi(match) else ""
    if match.group("esc"):
        return match.group(0) if match.group(0)[1:] in _SAFE_ESC else ""
    return ""  # strings, lone ESC, other control characters


def _safe_csi(match: re.Match[str]) -> bool:
    final, params = match.group("final"), match.group("params")
    if match.group("inter"):
        return False
    if final in "hl":
        prefix = "?" if params.startswith("?") else ""
        modes = params.split(";")
        return bool(params) and all(
            (m if m.startswith("?") else prefix + m) in _SAFE_MODES for m in modes
        )
    if final not in _SAFE_CSI_FINALS or not _PLAIN_PARAMS.fullmatch(params):
        return False  # private (?, >, =, <) forms of these are queries and keyboard modes
    return not (final in "ST" and ";" in params)  # CSI Ps;… T: mouse highlight tracking


@dataclass
class TerminalFilter:
    """Feed recorded output chunks; get back text that is safe to write to a terminal."""

    _carry: str = ""

    def feed(self, text: str) -> str:
        """The safe part of ``text``; an unfinished sequence at its end waits for the next."""
        text = self._carry + text
        self._carry = ""
        for start in (_open_string(text), _open_escape(text)):
            if start is not None and len(text) - start <= CARRY_MAX:
                text, self._carry = text[:start], text[start:]
                break
        return _TOKEN.sub(_keep, text)

    def flush(self) -> str:
        """What is left at the end (an unfinished sequence is dropped, its text kept)."""
        rest, self._carry = self._carry, ""
        return _TOKEN.sub(_keep, rest)


def _open_string(text: str) -> int | None:
    """Where the first OSC/DCS/SOS/PM/APC string that has no terminator yet starts: the rest of
    the stream may still end it, and everything after it belongs to it until then."""
    bel, st = text.rfind("\x07"), text.rfind("\x1b\\")
    found = _STRING_START.search(text, max(bel + 1, st + 2 if st != -1 else 0))
    return found.start() if found else None


def _open_escape(text: str) -> int | None:
    """Where a last ESC starts that begins no complete sequence yet (``ESC [ 3`` …)."""
    last = text.rfind("\x1b")
    if last == -1:
        return None
    match = _TOKEN.match(text, last)
    return last if match is None or match.group("lone") else None


def neutralize(text: str) -> str:
    """One-shot :class:`TerminalFilter` over a whole text."""
    terminal = TerminalFilter()
    return terminal.feed(text) + terminal.flush()
