"""How much padding the length buckets add (pad_to_multiple, batch.pad_to_bucket), per task, on the real data.

Captured steps need few batch shapes, so batches are padded beyond their longest row to the next multiple of
`pad_to_multiple`. This counts, over one shuffled pass of each task's training batches (the task's batch size
and tokenizer, as a run makes them), the tokens a step computes on with dynamic padding (to the longest row)
and with buckets, against the real tokens. CPU only; reads the data, trains nothing.

    python -m autolora.bench.padding --glue-dir DIR/glue --data-dir DIR [--multiple 32] \
[--tasks glue/sst2 ner/conll2003 e2e ...] [--out F]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from autolora.engine.batch import bucket_length

TASKS = {"glue/sst2": "minilm", "glue/cola": "minilm", "glue/mrpc": "minilm", "glue/rte": "minilm",
         "glue/stsb": "minilm", "ner/conll2003": "minilm", "e2e": "smollm2-135m"}  # task -> the model its runs use


def padded_tokens(lengths: list[list[int]], multiple: int, max_length: int) -> dict[str, int]:
    """Real, dynamically padded and bucketed token counts of batches given as lists of row lengths."""
    real = sum(sum(batch) for batch in lengths)
    dynamic = sum(len(batch) * max(batch) for batch in lengths)
    bucketed = sum(len(batch) * bucket_length(max(batch), multiple, max_length) for batch in lengths)
    return {"real": real, "dynamic": dynamic, "bucketed": bucketed}


def task_batches(task_name: str, model_name: str, data_dir: str | None, seed: int = 0) -> tuple[list[list[int]], int]:
    """(row lengths of each training batch of one shuffled pass, the task's max_length), as a run batches them."""
    from hydra import compose, initialize_config_dir

    from autolora.layout import config_dir
    from autolora.models.backbone import load_tokenizer
    from autolora.runner.run_config import build_settings
    from autolora.tasks import build_task

    overrides = [f"task={task_name}", f"model={model_name}", "device=cpu", "logger=none"]
    overrides += [f"data.data_dir={data_dir}"] if data_dir else []
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="padding"):
        cfg = compose("config", overrides=overrides)
    settings = build_settings(cfg)
    task = build_task(OmegaConf.to_container(cfg.task, resolve=True))
    tokenizer = load_tokenizer(settings.model, split_words=task.head == "token_classification")
    train = task.encode(task.load(settings.data).train, tokenizer)
    loader = DataLoader(train, batch_size=settings.retrain.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), collate_fn=task.collate(tokenizer))
    return [batch["attention_mask"].sum(dim=1).tolist() for batch in loader], task.max_length


def markdown(rows: dict[str, dict], multiple: int, command: str, commit: str) -> str:
    lines = ["# Padding added by the length buckets", "", f"- command: `{command}`", f"- commit: {commit}",
             "- device: CPU (counts only, no timing)", f"- date: {dt.date.today().isoformat()}",
             f"- buckets: multiples of {multiple} tokens up to each task's max_length; one shuffled pass over the "
             "training set in the batches a retrain makes (the task's batch size and tokenizer)", "",
             "| task | batches | real tokens | computed, dynamic padding | computed, buckets | dynamic / real | "
             "buckets / real | buckets / dynamic |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['batches']:,} | {r['real']:,} | {r['dynamic']:,} | {r['bucketed']:,} | "
                     f"{r['dynamic'] / r['real']:.2f} | {r['bucketed'] / r['real']:.2f} | "
                     f"{r['bucketed'] / r['dynamic']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from autolora.provenance import git_commit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="data.data_dir of the NER and E2E runs")
    parser.add_argument("--glue-dir", default=None,
                        help="data.data_dir of the GLUE runs (the folder holding SST-2/ ...)")
    parser.add_argument("--multiple", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    rows = {}
    for name in args.tasks:
        lengths, max_length = task_batches(name, TASKS[name],
                                           args.glue_dir if name.startswith("glue/") else args.data_dir)
        rows[name] = {"batches": len(lengths), **padded_tokens(lengths, args.multiple, max_length)}
        print(name, rows[name], flush=True)
    text = markdown(rows, args.multiple,
                    "python -m autolora.bench.padding " + " ".join(sys.argv[1:] if argv is None else argv),
                    git_commit())
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
