"""The one-screen summary's gate block: diagnostics and the noise warning."""

from __future__ import annotations

from autolora.ranks import search_diagnostics
from autolora.summary import gate_lines


def test_gate_block_shows_spread_and_the_warning_only_when_raised():
    """Undecided gates give the spread line plus a warning line with the advice; separated gates no warning;
    a search record from before the diagnostics gives no block at all."""
    undecided = gate_lines(search_diagnostics({"m": [0.125 + 1e-7, 0.125 - 1e-7] + [0.125] * 6}, 0.125))
    assert len(undecided) == 2 and "over 1 matrices: min 2e-07 / median 2e-07 / max 2e-07" in undecided[0]
    assert undecided[1].startswith("warning  ") and "search.alpha_lr" in undecided[1]
    separated = gate_lines(search_diagnostics({"m": [0.3, 0.3] + [0.4 / 6] * 6}, 0.125))
    assert len(separated) == 1 and "max 0.23" in separated[0]
    assert gate_lines({"steps": 2, "threshold": 0.125}) == []
