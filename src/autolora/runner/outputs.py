"""What a run leaves in its folder besides the search's ranks.json: the adapter in peft format (and a random
backbone's weights), predictions, the ranks figure, metrics.json. Every file is written atomically and every
folder appears whole or not at all."""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from autolora import layout
from autolora.files import output_error, write_atomic, write_json, write_text
from autolora.method import export
from autolora.method import ranks as ranks_io
from autolora.models.backbone import resolve_location
from autolora.models.runtime import store_frozen_linears_in
from autolora.runner.job import PEFT_TASK_TYPES, Job


def save_dir(target: Path, write) -> Path:
    """Fill a folder through a staging folder and a rename: it appears complete or not at all."""
    staging, stale = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for leftover in (staging, stale):  # left by a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        write(staging)
    except (OSError, SafetensorError) as err:  # a full disk: safetensors reports it as its own error type
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(target, err) from err
    if target.exists():  # a resumed run killed after this rename but before metrics.json: replace it
        target.rename(stale)
    staging.rename(target)
    shutil.rmtree(stale, ignore_errors=True)
    return target


def save_adapter(job: Job, model, ranks: Mapping[str, int]) -> Path:
    """The retrained adapter in peft format (plus the base weights when they are random-init)."""
    r = job.settings.retrain
    store_frozen_linears_in(model, torch.float32)  # a saved base model holds fp32, as loaded (Job.ready_to_train)
    config = ranks_io.peft_config(ranks, lora_alpha=r.lora_alpha, dropout=r.dropout, modules_to_save=job.heads,
                                  task_type=PEFT_TASK_TYPES[job.task.head],
                                  fan_in_fan_out=job.settings.model.fan_in_fan_out)
    cfg = job.settings.model
    if cfg.is_random:
        plain = export.unwrap(model)
        base_dir = save_dir(job.run_dir / layout.BASE_MODEL,
                            lambda d: (plain.save_pretrained(d), job.tokenizer.save_pretrained(d)))
        config.base_model_name_or_path = str(base_dir)
    else:
        config.base_model_name_or_path = resolve_location(cfg.path)
    peft_model = export.to_peft(model, config)
    return write_adapter(job, peft_model.save_pretrained)


def write_adapter(job: Job, save_weights) -> Path:
    """The adapter folder: peft's files, the tokenizer and (classification, NER) labels.json, the class names in
    id order, so that AutoPeftModelFor<head>.from_pretrained(folder, num_labels=len(labels)) loads it anywhere."""
    labels = getattr(job.task, "labels", None)

    def fill(folder: Path) -> None:
        save_weights(folder)
        job.tokenizer.save_pretrained(folder)
        if labels:
            write_json(folder / layout.LABELS, list(labels))

    return save_dir(job.run_dir / layout.ADAPTER, fill)


def write_predictions(job: Job, text: str | None) -> None:
    """The headline split's predictions (generation, NER), from the main process."""
    if text is not None and job.world.is_main:
        write_text(job.run_dir / layout.PREDICTIONS, text)


def save_rank_figure(job: Job, ranks: Mapping[str, int]) -> Path:
    """ranks.png: the ranks per layer, query/value rows."""
    from autolora.analysis.figures import plt, rank_heatmap

    k = job.settings.search.k if job.settings.method == "autolora" else job.settings.lora_r
    fig = rank_heatmap(ranks, k, f"{job.task.name} · {job.settings.model.name} · {job.settings.method}")
    path = job.run_dir / layout.RANKS_FIGURE
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)
    return path


def warn_undefined_metrics(record: Mapping[str, Any]) -> None:
    """A NaN metric (a correlation of constant predictions, say) is written as null; say so once per split."""
    for phase in ("search", "retrain"):
        for split in ("dev", "test"):  # the evaluation splits a phase records its scores under (Job.evaluate)
            scores = (record.get(phase) or {}).get(split) or {}
            undefined = [k for k, v in scores.items() if isinstance(v, float) and not math.isfinite(v)]
            if undefined:
                print(f"autolora-run: warning: {phase} {split} {', '.join(undefined)} undefined (NaN: constant "
                      "predictions or constant gold scores); written as null", file=sys.stderr)
