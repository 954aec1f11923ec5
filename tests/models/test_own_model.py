"""Your own model folder (model.path): model=local, the attention blocks' query and value projections found in
the architecture, the one-line error listing linear layers, new modules trained, the name from the folder,
quiet loading."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, compose

from autolora.cli.overrides import expand_overrides
from autolora.errors import TargetError
from autolora.models.backbone import resolve_auto
from autolora.runner.run_config import build_settings

OWN = REPO / "tests" / "fixtures" / "own"
REVIEWS = ["task=text_classification", f"data.data_dir={OWN}", "task.train_file=reviews.csv",
           "task.text_columns=[review]", "task.label_column=sentiment"]
# several search steps, no warm-up: alpha's first hypergradient is ~0 (B starts at 0), so a one-step search would
# leave every matrix undecided (rank search.min_rank = 0: nothing to retrain)
FAST = ["logger=none", "device=cpu", "progress=false", "search.epochs=1", "search.warmup_ratio=0.0",
        "retrain.epochs=1", "search.batch_size=4", "retrain.batch_size=8"]


def local_model(folder, *overrides):
    """The checked settings' model for model.path=<folder> (as the console script expands it)."""
    cfg = compose(*expand_overrides([f"model.path={folder}", *overrides]))
    return build_settings(cfg).model


def test_model_path_alone_selects_local_named_after_the_folder(model_folders):
    """model.path=<folder> without model=... selects model=local; the model is named after the folder; with
    model=<option> that option's recipe (and name) stays."""
    assert expand_overrides(["-m", "model.path=/m/x", "seed=1"]) == ["-m", "model.path=/m/x", "seed=1", "model=local"]
    assert expand_overrides(["model=minilm", "model.path=/m/x"]) == ["model=minilm", "model.path=/m/x"]
    assert local_model(model_folders["my-bert"]).name == "my-bert"
    assert local_model(str(model_folders["my-bert"]) + "/").name == "my-bert"


def test_targets_kind_and_layout_come_from_the_architecture(model_folders):
    """BERT: query/value, an encoder; DistilBERT (no peft default): q_lin/v_lin; GPT-2: the q and v slices of
    c_attn, a decoder whose Conv1D stores (in, out)."""
    bert = resolve_auto(local_model(model_folders["my-bert"]), "sequence_classification")
    assert (bert.targets.modules, bert.kind, bert.fan_in_fan_out) == (("query", "value"), "encoder", False)
    distilbert = resolve_auto(local_model(model_folders["my-distilbert"]), "sequence_classification")
    assert distilbert.targets.modules == ("q_lin", "v_lin") and distilbert.targets.found
    gpt2 = resolve_auto(local_model(model_folders["my-gpt2"]), "causal_lm")
    assert (gpt2.targets.modules, gpt2.targets.split, gpt2.targets.parts, gpt2.kind, gpt2.fan_in_fan_out) == (
        ("c_attn",), ("q", "k", "v"), ("q", "v"), "decoder", True)


def test_no_matching_target_is_one_line_listing_the_linear_layers(model_folders):
    """A model without attention blocks (Mamba), and targets that match nothing (query/value on DistilBERT):
    both errors list the model's linear layers."""
    with pytest.raises(TargetError, match=r"found no attention block .* in MambaForCausalLM: its linear layers: "
                                          r"in_proj, x_proj, dt_proj, out_proj, lm_head; name the projections"):
        resolve_auto(local_model(model_folders["my-mamba"]), "causal_lm")
    layers = "q_lin, k_lin, v_lin, out_lin, lin1, lin2, pre_classifier, classifier"
    with pytest.raises(TargetError,
                       match=rf"matches model.targets.modules=\['query', 'value'\]; its linear layers: {layers}$"):
        resolve_auto(local_model(model_folders["my-distilbert"], "model.targets.modules=[query,value]"),
                     "sequence_classification")


def test_a_folder_that_is_no_model_is_one_line(tmp_path):
    """model.path at a folder without config.json (or a typo) stops before any weights, naming the key."""
    with pytest.raises(FileNotFoundError,
                       match=rf"model.path={tmp_path}: not a model folder saved with save_pretrained"):
        resolve_auto(local_model(tmp_path), "sequence_classification")


def test_distilbert_folder_trains_its_new_pre_classifier(tmp_path, model_folders, monkeypatch, capfd, caplog):
    """The console path end to end: the run folder is outputs/<task>/<folder name>/<method>/<time>, the
    modules the checkpoint lacks (classifier and pre_classifier) are trained and saved with the adapter, and
    no library load report is printed."""
    from autolora.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["autolora-run", *REVIEWS, *FAST, f"model.path={model_folders['my-distilbert']}",
                                      "model.targets.modules=[q_lin,v_lin]", "task.name=reviews"])
    main()
    out, err = capfd.readouterr()
    [run_dir] = (tmp_path / "outputs" / "reviews" / "my-distilbert" / "autolora").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert metrics["model"] == "my-distilbert" and {"pre_classifier", "classifier"} <= set(saved["modules_to_save"])
    ranks = json.loads((run_dir / "ranks.json").read_text())["ranks"]  # 4 matrices of 32 x 32 (2 layers, q and v)
    assert len(ranks) == 4 and sum(ranks.values()) > 0
    lora = sum(ranks.values()) * (32 + 32)
    assert metrics["retrain"]["trainable_params"] == lora + (32 * 32 + 32) + (32 * 2 + 2)
    assert all(noise not in out + err for noise in ("LOAD REPORT", "Loading weights", "Warning")), out + err
    assert "MISSING" not in caplog.text  # transformers' load report goes through logging
    assert "ranks    from this run's search" in out


def test_verbose_shows_the_library_reports(tmp_path, model_folders, capfd, caplog):
    """verbose=true lets transformers' weight-loading bar and load report through (what quiet mode hides, as
    the test above checks)."""
    from autolora.runner.pipeline import execute

    model = ["method=lora", "model=local", f"model.path={model_folders['my-bert']}"]
    execute(compose(*REVIEWS, *FAST, *model, "verbose=true"), tmp_path / "run")
    assert "Loading weights" in capfd.readouterr().err and "MISSING" in caplog.text
