"""The demo is a test too: it exits 0 only if every real ssh outcome is the expected one."""

from __future__ import annotations

import pytest

from keyturn.entrypoints.demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_story_has_no_surprises(capsys: pytest.CaptureFixture[str]) -> None:
    """The 02:45 story runs end to end against real sshd and the audit chain verifies."""
    assert run_demo(window_s=5) == 0
    printed = capsys.readouterr().out
    assert "UNEXPECTED" not in printed
    assert "keyturn audit verify" in printed
    assert "every outcome as expected" in printed
