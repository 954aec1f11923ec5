"""Hostile input, third pass (issue 29): a folder someone else prepared never runs code, never has its files
truncated or overwritten, and every refusal is one line with exit status 2."""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch
from harness import GOOD_ROWS, TINY, fake_run, glue_files, snapshot

from autolora.cli.main import main


def one_line(capsys, argv: list[str]) -> str:
    """Run autolora-run with argv: assert exit status 2 and a single error line, and return that line."""
    sys.argv = ["autolora-run", *argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("autolora-run: error: "), err
    return lines[0]


class Payload:
    """Unpickling this makes a folder: proof that a load ran code."""

    def __init__(self, proof):
        self.proof = str(proof)

    def __reduce__(self):
        return (os.mkdir, (self.proof,))


def test_a_checkpoint_with_a_pickle_payload_is_refused_unread(tmp_path, capsys):
    """A folder made to look like an unfinished run, holding a crafted checkpoint.pt: resume=true ends in one
    line with exit 2, and the payload never runs (checkpoints load with weights_only=True)."""
    folder = fake_run(tmp_path / "run", *TINY)
    (folder / "ranks.json").unlink()  # unfinished before its search: the search phase reads the checkpoint
    proof = tmp_path / "payload_ran"
    torch.save({"phase": "search", "step": 1, "params": Payload(proof)}, folder / "checkpoint.pt")
    line = one_line(capsys, [*TINY, "resume=true", f"hydra.run.dir={folder}"])
    assert re.search(r"run/checkpoint.pt holds objects other than tensors .*was not loaded", line), line
    assert not proof.exists()


def test_a_checkpoint_of_plain_containers_in_the_wrong_shape_is_one_line(tmp_path, capsys):
    """A checkpoint.pt that loads (plain containers) but lacks what a resume needs: one line naming the file."""
    folder = fake_run(tmp_path / "run", *TINY)
    (folder / "ranks.json").unlink()
    torch.save({"phase": "search", "step": 3, "params": {}}, folder / "checkpoint.pt")
    line = one_line(capsys, [*TINY, "resume=true", f"hydra.run.dir={folder}"])
    assert re.search(r"run/checkpoint.pt does not fit this run .*move it away", line), line


def test_checkpoints_this_program_writes_load_with_weights_only(tmp_path):
    """The RNG state (NumPy's included) round-trips through torch.load(weights_only=True)."""
    import random

    import numpy as np

    from autolora.engine.checkpoint import restore_rng, rng_state

    np.random.seed(3)
    random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (np.random.rand(4), random.random(), torch.rand(2))
    np.random.seed(99)
    random.seed(99)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (np.random.rand(4), random.random(), torch.rand(2))
    assert np.array_equal(expected[0], again[0]) and expected[1] == again[1] and torch.equal(expected[2], again[2])


def test_a_symlink_placed_as_the_lock_leaves_its_target_untouched(tmp_path, capsys):
    """A symbolic link named .autolora-lock in an empty run folder, pointing at a user's file: one line, exit 2,
    and the file keeps its bytes (the lock is opened with O_NOFOLLOW); a hard link is refused the same way."""
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's thesis\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".autolora-lock").symlink_to(precious)
    before = snapshot(tmp_path)
    line = one_line(capsys, [*TINY, f"hydra.run.dir={folder}"])
    assert re.search(r"run/\.autolora-lock is a symbolic link", line), line
    assert snapshot(tmp_path) == before
    (folder / ".autolora-lock").unlink()
    os.link(precious, folder / ".autolora-lock")
    line = one_line(capsys, [*TINY, f"hydra.run.dir={folder}"])
    assert re.search(r"run/\.autolora-lock is a hard link to another file", line), line
    assert precious.read_text() == "the user's thesis\n"


def test_a_resumed_sweep_does_not_skip_a_finished_point_whose_data_changed(tmp_path, capsys):
    """A finished sweep point whose data file was edited afterwards: resume=true refuses it (one line naming
    the file) instead of skipping it as finished, which would report the old data's result as the new one's."""
    from conftest import compose

    from autolora.errors import ConfigError
    from autolora.runner.pipeline import execute

    data = glue_files(tmp_path / "data", GOOD_ROWS)
    args = [*TINY, "task=glue/rte", f"data.data_dir={data}", "search.batch_size=2"]  # 2 steps: the gates move
    run_dir = tmp_path / "point"
    assert execute(compose(*args), run_dir) is not None
    assert execute(compose(*args, "resume=true"), run_dir, sweep=True) is None  # same data: skipped
    train = data / "glue" / "RTE" / "train.tsv"
    train.write_text(train.read_text().replace("sentence 3", "sentence three"))
    with pytest.raises(ConfigError, match=r"holds a finished run of other data: .*RTE/train.tsv changed"):
        execute(compose(*args, "resume=true"), run_dir, sweep=True)


def test_a_training_file_of_a_single_class_is_one_line(tmp_path, capsys):
    """Every training row of one label: one line before the model loads (it used to train to accuracy 1.0)."""
    rows = "".join(f"{i}\tsentence {i}\tother {i}\tentailment\n" for i in range(8))
    data = glue_files(tmp_path / "data", rows)
    line = one_line(capsys, [*TINY, "task=glue/rte", f"data.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert re.search(r"RTE: the training split holds a single class \(8 rows", line), line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
