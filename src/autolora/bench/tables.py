"""make bench's report from its timings: the `auto` rows (what compile=auto picks for a run of the task's default
length), each mode's total time for that run, the ratios to peft's steps, the issue-#28 checks, and OUT.md.

The headline ratios are to **peft's compiled step** (torch.compile, reduce-overhead): a GPU-bound anchor that
moves little with the host CPU; the ratios to peft's eager step stay beside them. A total is
`warm-up + steps x ms`: the bench's warm-up (its first steps' wall time: compilation and capture of one shape)
plus the assumed run's steps at the measured step time.

A bench split over several calls (one shape set each, on the same machine) joins into one report:
    python -m autolora.bench.tables --merge A.json B.json --out results/bench
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from autolora.engine import auto_compile, step_costs
from autolora.files import read_json, read_text, write_json, write_text

OURS = step_costs.STEPS  # our steps, by the names bench.steps.OURS gives them
CAPTURED = ("graphs", "inductor")
TARGETS = {"second_order": 2.0, "first_order": 1.2, "fixed_rank": 0.8, "memory": 1.2}  # ratios to peft_lora
# issue #28's bar, ratios to peft's compiled step: the fastest captured step, its memory where peft's is > 1 GiB,
# and auto's total time for its assumed run against the best mode's total
CHECKS = {"second_order": 3.0, "fixed_rank": 1.0, "memory": 1.0, "memory_floor_mib": 1024, "auto_total": 1.10}
# The run compile=auto is asked about, per bench model: its task's training rows (the dataset's train split)
# and the task's default epochs (conf/task/: search_epochs, retrain_epochs); the batch is the bench shape's.
RUNS = {"minilm": ("glue/sst2", 67_349), "roberta-base": ("glue/sst2", 67_349), "gpt2-medium": ("e2e", 42_061)}


def assumed_steps(rows: int, search_epochs: int, retrain_epochs: int, batch: int) -> dict[str, int]:
    """Steps of the run per step kind: the retrain (fixed_rank) over every row, the search over D_tr (half)."""
    search = search_epochs * math.ceil(math.ceil(rows / 2) / batch)
    return {"fixed_rank": retrain_epochs * math.ceil(rows / batch), **{which: search for which in OURS[1:]}}


def total_s(row: Mapping, steps: int) -> float:
    return round(row["warmup_s"] + steps * row["ms"] / 1000, 2)


def timed_kinds(entry: Mapping[str, dict]) -> list[str]:
    """Our step kinds with at least one timed row at this shape (bench --kinds may leave some out)."""
    return [which for which in OURS if any(label.startswith(f"{which}/") for label in entry)]


def auto_rows(entry: Mapping[str, dict], model: str, batch: int, length: int, steps: Mapping[str, int]) -> dict:
    """Per timed step kind, the `auto` row: the mode compile=auto picks for `steps[which]` steps at this shape
    (one shape: the bench times one), with that mode's timings when it was timed; and `steps`/`total_s` added
    to every row of ours, for comparing totals."""
    rows = {}
    for which in timed_kinds(entry):
        for label, row in entry.items():
            if label.startswith(f"{which}/"):
                row.update(steps=steps[which], total_s=total_s(row, steps[which]))
        plan = auto_compile.PhasePlan(model=model, step=which, steps=steps[which], epochs=1, batch_size=batch,
                                      max_length=length, pad_to_multiple=length, short_last_batch=False)
        choice = auto_compile.choose("auto", "graphs", plan)
        picked = entry.get(f"{which}/{choice.mode}")
        rows[f"{which}/auto"] = {**(picked or {}), "picked": choice.mode, "steps": steps[which],
                                 "reason": choice.reason, "timed": picked is not None}
    return rows


def ratios(entry: Mapping[str, dict], modes: list[str]) -> dict:
    """Per mode, each of our steps' time (and the second-order step's peak memory) over peft's compiled step
    (`*_vs_compiled`) and over peft's eager step; a mode whose rows lack a timing (auto's pick not timed) is left
    out."""
    eager, compiled = entry["peft_lora"], entry["peft_compiled"]
    kinds = timed_kinds(entry)
    out = {}
    for mode in modes:
        mine = {which: entry.get(f"{which}/{mode}", {}) for which in kinds}
        if not mine or not all("ms" in row for row in mine.values()):
            continue
        out[mode] = {}
        for base, suffix in ((compiled, "_vs_compiled"), (eager, "")):
            out[mode].update({f"{which}_ratio{suffix}": round(mine[which]["ms"] / base["ms"], 3) for which in kinds})
            if "second_order" in mine:
                out[mode][f"memory_ratio{suffix}"] = round(mine["second_order"]["peak_mib"] / base["peak_mib"], 3)
    out["peft_compiled"] = round(compiled["ms"] / eager["ms"], 3)
    return out


def checks(entry: Mapping[str, dict]) -> dict:
    """Issue #28's bar at one shape: the fastest captured fixed-rank and second-order steps over peft's compiled
    step, that second-order step's peak memory over peft compiled's (where that is over 1 GiB), and per step
    kind auto's total over the best timed mode's total. None where a needed row was not timed."""
    compiled = entry["peft_compiled"]
    out = {}
    for which in ("fixed_rank", "second_order"):
        timed = [(entry[f"{which}/{mode}"]["ms"], mode) for mode in CAPTURED if f"{which}/{mode}" in entry]
        if not timed:
            out[which] = None
            continue
        ms, mode = min(timed)
        out[which] = {"mode": mode, "ratio": round(ms / compiled["ms"], 3),
                      "ok": ms / compiled["ms"] <= CHECKS[which]}
        if which == "second_order":
            memory = entry[f"{which}/{mode}"]["peak_mib"] / compiled["peak_mib"]
            out["memory"] = None if compiled["peak_mib"] <= CHECKS["memory_floor_mib"] else {
                "mode": mode, "ratio": round(memory, 3), "ok": memory <= CHECKS["memory"]}
    for which in OURS:
        auto = entry.get(f"{which}/auto")
        totals = {label.split("/")[1]: row["total_s"] for label, row in entry.items()
                  if label.startswith(f"{which}/") and "total_s" in row and not label.endswith("/auto")}
        if auto is None or not auto["timed"] or not totals:
            out[f"{which}_auto_total"] = None
            continue
        best = min(totals, key=totals.get)
        share = auto["total_s"] / totals[best]
        out[f"{which}_auto_total"] = {"picked": auto["picked"], "best": best, "ratio": round(share, 3),
                                      "ok": share <= CHECKS["auto_total"]}
    return out


def _cell(check: Mapping | None) -> str:
    if check is None:
        return "n/a"
    which = f"{check['picked']}; best {check['best']}" if "best" in check else check["mode"]
    return f"{check['ratio']} ({which}) " + ("ok" if check["ok"] else "**over**")


def markdown(report: dict) -> str:
    """OUT.md: provenance, one table of every step per shape, the ratios (to peft compiled first), the checks."""
    lines = [TITLE, "",
             f"- command: `{report['command']}`", f"- commit: {report['commit']}", f"- device: {report['device']}",
             f"- date: {report['date']}", f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             f"- timing: median of {report['steps']} steps after {report['warmup']} warm-up steps (their wall time, "
             "compilation and capture included, is the warm-up column), CUDA events; bf16 autocast; random-init "
             "weights; the same batches every step; every step includes its optimiser updates, clipping and the "
             "schedule", "- MFU: analytic FLOPs (4 x non-embedding params x tokens + attention, per forward/backward "
             "pass; passes per step: LoRA 1, first order 2, second order 3 (forward difference), central 4) over the "
             "datasheet dense bf16 peak",
             "- our steps keep frozen weights in bf16 (as the pipeline does); peft's keep fp32, cast by autocast",
             "- `auto`: the mode compile=auto picks (engine/auto_compile.py, from engine/step_costs.py) for a run of "
             "the task's default length at this shape (`steps`: the retrain's for fixed_rank, the search's for the "
             "others; one batch shape); total = warm-up + steps x ms", "",
             "| shape | step | ms | vs peft compiled | vs peft eager | spread ms | peak MiB | tokens/s | MFU | "
             "warm-up s | steps | total s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, entry in report["shapes"].items():
        eager, compiled = entry["peft_lora"]["ms"], entry["peft_compiled"]["ms"]
        for label, e in entry.items():
            if label in ("ratios", "checks"):
                continue
            if "ms" not in e:  # an auto pick that was not timed at this shape
                lines.append(f"| {key} | {label} -> {e['picked']} | not timed | | | | | | | | {e['steps']} | |")
                continue
            name = f"{label} -> {e['picked']}" if "picked" in e else label
            lines.append(f"| {key} | {name} | {e['ms']:.2f} | {e['ms'] / compiled:.2f}x | {e['ms'] / eager:.2f}x | "
                         f"{e['spread_ms']:.2f} | {e['peak_mib']:.0f} | {e['tokens_per_s']:,} | "
                         f"{e['mfu'] if e['mfu'] is not None else 'n/a'} | {e['warmup_s']:.1f} | "
                         f"{e.get('steps', '')} | {e.get('total_s', '')} |")
    for mode in report["modes"]:
        lines += ["", f"Ratios of our steps ({mode}) to peft's compiled step (headline) and to peft's eager step:", "",
                  "| shape | second_order vs compiled | fixed_rank vs compiled | memory vs compiled | "
                  f"second_order vs eager (<= {TARGETS['second_order']}) | first_order vs eager (<= "
                  f"{TARGETS['first_order']}) | fixed_rank vs eager (<= {TARGETS['fixed_rank']}) | memory vs eager "
                  f"(<= {TARGETS['memory']}) | central vs eager | peft compiled vs eager |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, entry in report["shapes"].items():
            r = entry["ratios"].get(mode)
            if r is None:
                continue
            cells = [r.get(k, "—") for k in ("second_order_ratio_vs_compiled", "fixed_rank_ratio_vs_compiled",
                                              "memory_ratio_vs_compiled", "second_order_ratio", "first_order_ratio",
                                              "fixed_rank_ratio", "memory_ratio", "second_order_central_ratio")]
            lines.append(f"| {key} | " + " | ".join(map(str, cells)) + f" | {entry['ratios']['peft_compiled']} |")
    lines += ["", f"Issue #28's bar (fastest captured step vs peft compiled: second order <= {CHECKS['second_order']}, "
              f"fixed rank <= {CHECKS['fixed_rank']}, second-order memory <= {CHECKS['memory']} where peft "
              f"compiled's is over {CHECKS['memory_floor_mib']} MiB; auto's total <= {CHECKS['auto_total']:.2f}x "
              "the best mode's):", "",
              "| shape | second_order | fixed_rank | memory | auto total: fixed_rank | auto total: second_order |",
              "|---|---|---|---|---|---|"]
    for key, entry in report["shapes"].items():
        c = entry.get("checks", {})
        lines.append(f"| {key} | {_cell(c.get('second_order'))} | {_cell(c.get('fixed_rank'))} | "
                     f"{_cell(c.get('memory'))} | {_cell(c.get('fixed_rank_auto_total'))} | "
                     f"{_cell(c.get('second_order_auto_total'))} |")
    return "\n".join(lines) + "\n"


SAME = ("device", "peak_bf16_tflops", "steps", "warmup", "modes", "commit", "versions")  # what parts must share


def merge(reports: Sequence[dict]) -> dict:
    """One report from benches of disjoint shape sets that share device, timing settings, commit and versions
    (ValueError otherwise); its command lists each part's, its date the parts' dates."""
    first = reports[0]
    for key in SAME:
        differ = sorted({json.dumps(r[key], sort_keys=True) for r in reports})
        if len(differ) > 1:
            raise ValueError(f"the parts differ in {key}: {', '.join(differ)}")
    shapes: dict[str, dict] = {}
    for report in reports:
        if twice := sorted(set(shapes) & set(report["shapes"])):
            raise ValueError(f"shape {', '.join(twice)} is in more than one part")
        shapes.update(report["shapes"])
    return {**{key: first[key] for key in SAME}, "command": " ; ".join(r["command"] for r in reports),
            "date": ", ".join(dict.fromkeys(r["date"] for r in reports)), "shapes": shapes}


def read_report(path: Path) -> dict:
    """One part's OUT.json; a ValueError names the file that is missing, unreadable or not a bench report."""
    report = read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("shapes"), dict):
        raise ValueError(f"{path}: not a bench report (no 'shapes' table)")
    return report


TITLE = "# Training-step cost (make bench)"


def check_out(out: Path) -> None:
    """OUT.json and OUT.md are new or a bench's own (see save); a ValueError names the one that is not."""
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    if json_path.exists():
        read_report(json_path)
    if md_path.exists() and not read_text(md_path).startswith(TITLE):
        raise ValueError(f"{md_path}: not a page the bench wrote (it does not start with {TITLE!r}): not written over")


def save(out: Path, report: dict) -> None:
    """OUT.json and OUT.md, each written whole (files.write_text: a killed bench leaves the old file, not half
    of one), and only over files a bench wrote: an OUT.json that is no bench report, or an OUT.md that does not
    start with the bench's title, is the user's and stays (ValueError)."""
    check_out(out)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, report)  # a NaN as null: read_report reads strictly
    write_text(md_path, markdown(report))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Join bench reports of disjoint shape sets: OUT.json, OUT.md.")
    parser.add_argument("--merge", type=Path, nargs="+", required=True, help="the parts' OUT.json files, in order")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        save(args.out, merge([read_report(path) for path in args.merge]))
    except (ValueError, KeyError) as err:
        print(f"bench.tables: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
