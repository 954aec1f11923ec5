"""method=eva end to end on CPU (debug=tiny): the run, its adapter in peft format, its folder name and labels,
and a kill in the training loop that resumes to the uninterrupted result."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from harness import LONGER, events, launch

from autolora.runner import outputs
from autolora.runner.pipeline import execute

TINY = ("debug=tiny",)


def test_eva_run_keeps_the_budget_and_saves_an_adapter_peft_loads_to_the_same_logits(tmp_path, monkeypatch):
    """metrics.json: ranks from eva summing to eva.r x 4 matrices; the adapter folder, loaded with
    PeftModel.from_pretrained on the same seeded backbone, computes the trained model's logits exactly."""
    from peft import PeftModel

    from autolora.models.backbone import load_model, load_tokenizer
    from autolora.runner.run_config import check_config

    trained = {}
    original = outputs.write_adapter

    def capture(job, save_weights):  # the trained PeftModel, by its bound save_pretrained
        trained["model"] = save_weights.__self__
        return original(job, save_weights)

    monkeypatch.setattr(outputs, "write_adapter", capture)
    cfg = compose(*TINY, "method=eva", "eva.r=3", "eva.rho=2")
    run_dir = tmp_path / "run"
    record = execute(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ranks_from"] == "eva" == record["ranks_from"] and "search" not in metrics
    assert len(metrics["ranks"]) == 4 and sum(metrics["ranks"].values()) == 3 * 4
    assert metrics["retrain"]["steps"] == 4 and metrics["retrain"]["capture"] is None  # CPU: eager
    settings, task = check_config(cfg)
    tokenizer = load_tokenizer(settings.model)
    base, _ = load_model(settings.model, task.head, task.num_labels, tokenizer, settings.seed)
    loaded = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    built = {n.removeprefix("base_model.model."): layer.r["default"] for n, layer in loaded.named_modules()
             if hasattr(layer, "lora_A") and "default" in getattr(layer, "r", {})}
    assert built == {n: r for n, r in metrics["ranks"].items() if r}
    batch = tokenizer(["a fine film", "nothing good here at all"], padding=True, return_tensors="pt")
    model = trained["model"].eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_eva_folder_name_label_and_origin():
    """Run folders eva_r4_rho2 (configs saved before eva pass four values), report label 'EVA r=4 (rho 2)',
    and the summary's origin line."""
    from omegaconf import OmegaConf

    from autolora.analysis.finished_runs import variant_of
    from autolora.runner.run_config import method_label
    from autolora.runner.summary import ranks_origin

    assert method_label("eva", 8, 4, "default", 4, 2.0) == "eva_r4_rho2"
    assert method_label("eva", 8, 4, "default", 2, 1.5) == "eva_r2_rho1.5"
    assert method_label("adalora", 8, 4, "default") == "adalora_r4"
    assert variant_of({"method": "eva", "eva": {"r": 4, "rho": 2.0}}) == "EVA r=4 (rho 2)"
    assert ranks_origin({"ranks_from": "eva"}).startswith("method=eva: EVA's explained-variance")
    run_dir = OmegaConf.to_container(compose(*TINY).hydra.run, resolve=False)["dir"]  # conf/config.yaml passes them
    assert "${autolora.method:${method},${lora.r},${adalora.target_r},${hydra:runtime.choices.search},${eva.r}," \
           "${eva.rho}}" in run_dir


@pytest.mark.slow
def test_eva_killed_in_training_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL at EVA's training step 5 (checkpoint at 3), resume (the ranks rebuilt from the checkpoint): the
    ranks, metrics and logged losses equal those of an uninterrupted run."""
    overrides = [*LONGER, "method=eva", "eva.r=2", "eva.rho=4"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert launch("none", 0, [*overrides, f"hydra.run.dir={reference}"], tmp_path).returncode == 0
    first = launch("retrain", 5, [*overrides, f"hydra.run.dir={resumed}"], tmp_path)
    assert first.returncode == -9 and (resumed / "checkpoint.pt").exists(), first.stderr[-2000:]
    second = launch("none", 0, [*overrides, f"hydra.run.dir={resumed}", "resume=true"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    ref, got = (json.loads((d / "metrics.json").read_text()) for d in (reference, resumed))
    assert got["ranks"] == ref["ranks"] and got["retrain"]["dev"] == ref["retrain"]["dev"]
    assert events(resumed) == events(reference)
