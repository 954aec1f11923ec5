"""cli/init_order.py: issue #31's start-order measurement runs the run's own search, and fails in one line."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO

from autolora.cli import init_order


def test_the_measured_search_is_the_runs_own_search(tmp_path, monkeypatch):
    """The same config through autolora-run and through the measurement gives the same final gates to the
    last bit (same model, A draw, split, loaders and search), and the start quantities exist per component."""
    from autolora.cli.main import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["autolora-run", "debug=tiny", "method=autolora",
                                     f"hydra.run.dir={tmp_path / 'run'}"])
    main()
    run_gates = json.loads((tmp_path / "run" / "ranks.json").read_text())["alpha"]
    measured = init_order.measure(["debug=tiny", "method=autolora"])
    assert measured["gates"] == run_gates
    assert set(measured["start"]) == set(run_gates)
    k = len(next(iter(run_gates.values())))
    for name, start in measured["start"].items():
        assert len(start["gradient"]) == len(start["norm"]) == k, name
        assert min(start["gradient"]) > 0 and min(start["norm"]) > 0, name  # B = 0 at the start: G A_jᵀ ≠ 0
    for quantity in init_order.QUANTITIES:
        rho = measured["rho"][quantity]
        assert math.isnan(rho) or -1 <= rho <= 1


def test_the_table_summarises_the_seeds(tmp_path):
    paths = []
    for seed, (g, n) in enumerate([(0.5, -0.1), (0.1, 0.2), (-0.3, 0.0)]):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps({"rho": {"gradient": g, "norm": n}}))
    text = init_order.table(paths)
    assert "| ‖G A_jᵀ‖ at the start | +0.10 ± 0.40 | 2 of 3 | +0.50 +0.10 -0.30 |" in text
    assert "| ‖A_j‖ | +0.03 ± 0.15 | 1 of 3 |" in text


def test_bad_input_ends_in_one_line_and_status_2(capsys):
    for argv in (["debug=tiny", "method=lora", "--out", "x.json"], ["debug=tiny", "no_such_key=1", "--out", "x.json"]):
        with pytest.raises(SystemExit) as stop:
            init_order.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("init_order: error:") and "\n" not in err, err


def test_a_bad_out_or_table_file_is_refused_before_the_search_in_one_line(tmp_path, capsys, monkeypatch):
    """--out naming a file of the user's (or a folder) is refused before any search runs, and the file is kept;
    --table files that are missing, broken or not measurements are named."""
    mine = tmp_path / "thesis.json"
    mine.write_text('{"chapter": 1}')
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setattr(init_order, "measure", lambda *a: pytest.fail("the search ran"))
    cases = [(["debug=tiny", "--out", str(mine)], "thesis.json exists and is not a start-order measurement"),
             (["debug=tiny", "--out", str(tmp_path)], "is a folder"),
             (["--table", str(tmp_path / "absent.json")], "absent.json: file not found"),
             (["--table", str(tmp_path / "broken.json")], "broken.json: not valid JSON (Expecting"),
             (["--table", str(mine)], "thesis.json: not a start-order measurement")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            init_order.main(argv)
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and "\n" not in err and message in err, err
    assert mine.read_text() == '{"chapter": 1}'
