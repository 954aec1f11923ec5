"""compile=auto's pick (engine/auto_compile.py) from the measured cost table (engine/step_costs.py), and the
shared compile cache (engine/compile_cache.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose

from autolora.engine import auto_compile, compile_cache, step_costs
from autolora.engine.distributed import SINGLE
from autolora.runner.job import compile_choices, phase_plans
from autolora.runner.run_config import build_settings

GPT2_MEDIUM = auto_compile.PhasePlan(model="gpt2-medium", step="fixed_rank", steps=1000, epochs=1, batch_size=32,
                                     max_length=256, pad_to_multiple=256, short_last_batch=False)


def test_the_table_records_its_provenance_and_only_known_steps():
    """Every row names a step the bench times, at a positive cost; the provenance is the issue's bench run."""
    assert step_costs.PROVENANCE == {"command": "python -m autolora.bench --steps 20 --warmup 3", "commit": "96df89a",
                                     "device": "NVIDIA H200", "date": "2026-12-04"}
    for row in step_costs.COSTS:
        assert row.step in step_costs.STEPS and min(row.graphs_ms, row.inductor_ms, row.inductor_warmup_s) > 0


def test_lookup_stands_for_measured_shapes_and_larger_only():
    """A row covers its model at its measured tokens per step and above; smaller, other models, other steps: none."""
    row = step_costs.lookup("gpt2-medium", "second_order", 32 * 256)
    assert row is not None and row.graphs_ms == 313.65 and row.shape == "gpt2-medium@32x256"
    assert step_costs.lookup("gpt2-medium", "second_order", 64 * 512) is row
    assert step_costs.lookup("gpt2-medium", "second_order", 16 * 128) is None
    assert step_costs.lookup("minilm", "fixed_rank", 10**6) is None
    assert step_costs.lookup("gpt2-medium", "first_order", 10**6) is None
    with pytest.raises(ValueError, match="step must be one of"):
        step_costs.lookup("gpt2-medium", "third_order", 10**6)


def test_a_long_run_picks_inductor_a_short_one_graphs():
    """inductor where steps x saved ms beat the warm-up (67.35 ms saved, 56.3 s warm-up at gpt2-medium fixed rank:
    the break-even is 836 steps), graphs below it; the reason gives the sums."""
    long = auto_compile.choose("auto", "graphs", GPT2_MEDIUM)
    assert long.mode == "inductor"
    assert long.reason.startswith("inductor: 1000 steps x ~67.4 ms saved = ~67 s > ~56 s warm-up (1 shape x 56 s")
    assert "gpt2-medium@32x256" in long.reason
    short = auto_compile.choose("auto", "graphs", dataclasses.replace(GPT2_MEDIUM, steps=800))
    assert short.mode == "graphs" and "800 steps" in short.reason and "<=" in short.reason


def test_more_batch_shapes_cost_more_warm_up():
    """Each length bucket (and each pass's short last batch) compiles separately: 8 buckets need 8x the steps."""
    plan = dataclasses.replace(GPT2_MEDIUM, pad_to_multiple=32, steps=5000)
    assert auto_compile.batch_shapes(plan) == 8
    assert auto_compile.batch_shapes(dataclasses.replace(plan, short_last_batch=True, epochs=3)) == 11
    assert auto_compile.choose("auto", "graphs", plan).mode == "graphs"  # 337 s saved <= 8 x 56 s
    assert auto_compile.choose("auto", "graphs", dataclasses.replace(plan, steps=7000)).mode == "inductor"


def test_the_searchs_validation_batches_count_as_shapes_of_their_own():
    """Validation batches of another row count add every bucket again; their short last batch one per pass (at
    most one per bucket); validation batches as large as the training ones add only that short last batch."""
    plan = dataclasses.replace(GPT2_MEDIUM, pad_to_multiple=32)  # 8 buckets
    assert auto_compile.batch_shapes(dataclasses.replace(plan, val_batch_size=32, val_passes=3)) == 8
    assert auto_compile.batch_shapes(dataclasses.replace(plan, val_batch_size=64, val_passes=3)) == 16
    assert auto_compile.batch_shapes(dataclasses.replace(plan, val_batch_size=32, val_short_last_batch=True,
                                                         val_passes=3)) == 11
    assert auto_compile.batch_shapes(dataclasses.replace(plan, val_batch_size=64, val_short_last_batch=True,
                                                         val_passes=100)) == 24


def test_the_search_plan_takes_its_validation_batches_from_the_settings():
    """search.val_batch_size (else search.batch_size) and D_val's rows set the plan's validation batches, and
    batch_shapes counts them beside the training batches' (8 buckets, a short last batch of 5 rows on each side)."""
    base = build_settings(compose("debug=tiny", "search.batch_size=32", "search.epochs=4", "pad_to_multiple=32"))
    settings = dataclasses.replace(base, device=torch.device("cuda"), model=dataclasses.replace(base.model,
                                                                                                 name="gpt2-medium"))
    task = SimpleNamespace(max_length=256)
    plan = phase_plans(settings, task, 40_010)["search"]  # D_tr and D_val 20,005 rows each (val_fraction 0.5)
    assert (plan.steps, plan.val_batch_size, plan.val_short_last_batch, plan.val_passes) == (2504, 32, True, 4)
    assert auto_compile.batch_shapes(plan) == 8 + 4 + 4
    wide = dataclasses.replace(settings, search=dataclasses.replace(settings.search, val_batch_size=128))
    wide_plan = phase_plans(wide, task, 40_010)["search"]
    assert (wide_plan.val_batch_size, wide_plan.val_passes) == (128, 16)  # 157 validation batches a pass
    assert auto_compile.batch_shapes(wide_plan) == 8 + 4 + 8 + 8


def test_unknown_shapes_keep_graphs_and_explicit_or_impossible_modes_stand():
    """No measured row: graphs (auto's old pick). off (CPU, data parallel, eager-only) and explicit modes are
    never changed."""
    unknown = auto_compile.choose("auto", "graphs", dataclasses.replace(GPT2_MEDIUM, model="minilm", steps=10**6))
    assert unknown.mode == "graphs" and "no measured inductor cost for minilm" in unknown.reason
    assert auto_compile.choose("auto", "off", GPT2_MEDIUM).mode == "off"
    assert auto_compile.choose("graphs", "graphs", dataclasses.replace(GPT2_MEDIUM, steps=10**6)) == \
        auto_compile.Choice("graphs", "graphs: set by compile=graphs")
    assert auto_compile.choose("inductor", "inductor", dataclasses.replace(GPT2_MEDIUM, steps=1)).mode == "inductor"


def test_search_step_names_follow_the_search_settings():
    """forward difference -> second_order, central -> second_order_central, eta 0 -> first_order."""
    assert auto_compile.search_step("fd", "forward", 1e-4) == "second_order"
    assert auto_compile.search_step("fd", "central", 1e-4) == "second_order_central"
    assert auto_compile.search_step("fd", "forward", 0.0) == "first_order"


def test_auto_on_cpu_stays_eager_with_its_reason():
    """On CPU compile=auto is off for both phases, as before the table, and says why."""
    settings = build_settings(compose("debug=tiny"))
    task = SimpleNamespace(max_length=32)
    choices = compile_choices(settings, SINGLE, task, 32)
    assert {phase: c.mode for phase, c in choices.items()} == {"search": "off", "retrain": "off"}
    assert choices["search"].reason == "off: no capture here (it needs a CUDA device)"


def test_auto_on_cuda_counts_the_phase_steps_from_the_data():
    """The retrain's steps are epochs x batches of the whole training set, the search's of D_tr only: with the
    gpt2-medium costs, 40k rows at 32 x 256 repay inductor in the retrain (2 epochs: 2500 steps)."""
    base = build_settings(compose("debug=tiny", "retrain.batch_size=32", "retrain.epochs=2", "search.batch_size=32",
                                  "pad_to_multiple=256"))
    settings = dataclasses.replace(base, device=torch.device("cuda"), model=dataclasses.replace(base.model,
                                                                                                 name="gpt2-medium"))
    choices = compile_choices(settings, SINGLE, SimpleNamespace(max_length=256), 40_000)
    assert choices["retrain"].mode == "inductor" and choices["retrain"].reason.startswith("inductor: 2500 steps")
    search_steps = base.search.epochs * 20_000 // 32  # D_tr is half the rows (val_fraction 0.5)
    assert f"{search_steps} steps" in choices["search"].reason


def test_the_compile_cache_goes_where_configured_and_keeps_the_users_own(tmp_path):
    """compile_cache=FOLDER sets both variables under it; null keeps variables the user set, else the user cache."""
    environ = {"TRITON_CACHE_DIR": "/mine/triton", "AUTOLORA_CACHE": str(tmp_path)}
    chosen = compile_cache.use(None, environ)
    assert chosen == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "compile" / "inductor"),
                      "TRITON_CACHE_DIR": "/mine/triton"}
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == chosen["TORCHINDUCTOR_CACHE_DIR"]
    shared = tmp_path / "sweep" / "cache"
    assert compile_cache.use(str(shared), environ) == {"TORCHINDUCTOR_CACHE_DIR": str(shared / "inductor"),
                                                      "TRITON_CACHE_DIR": str(shared / "triton")}
    assert not shared.exists()  # the libraries create it when they first write
    assert compile_cache.default_folder({"XDG_CACHE_HOME": "/x"}) == Path("/x/autolora/compile")


def test_a_later_sweep_point_in_the_same_process_does_not_inherit_an_earlier_points_cache(tmp_path):
    """Point 1 (compile_cache=A) then point 2 (null) in one process: point 2 gets the user's triton folder back
    and the default inductor folder, not A; a user's change between the points stands."""
    environ = {"TRITON_CACHE_DIR": "/mine/triton", "AUTOLORA_CACHE": str(tmp_path)}
    compile_cache.use(str(tmp_path / "a"), environ)
    assert environ["TRITON_CACHE_DIR"] == str(tmp_path / "a" / "triton")
    assert compile_cache.use(None, environ) == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "compile" / "inductor"),
                                               "TRITON_CACHE_DIR": "/mine/triton"}
    environ["TORCHINDUCTOR_CACHE_DIR"] = "/mine/inductor"  # the user sets it between points
    assert compile_cache.use(None, environ)["TORCHINDUCTOR_CACHE_DIR"] == "/mine/inductor"
    assert compile_cache.MARKER not in environ  # nothing of ours left in effect
