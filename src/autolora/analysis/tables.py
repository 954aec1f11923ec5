"""The report's tables as text: task x method pivots in markdown and LaTeX (booktabs), rows as numeric CSV.

Pure formatting: a row is one group of runs (report.summarise), its scores already on the shown scale.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolora.analysis.agreement import modal_agreement, pair_agreement
from autolora.files import write_text

METHOD_ORDER = ("AutoLoRA", "LoRA", "AdaLoRA")  # columns: AutoLoRA and its ablations, the rank grid, AdaLoRA
Score = Mapping[str, float | None]  # {"mean": ..., "std": ...}; std None for one seed, mean None for n/a


def replace_section(existing: str, heading: str, text: str, title: str = "") -> str:
    """A markdown page with the section that starts at `heading` (text starts with it) replaced by `text` up to
    the next '## ' heading, the other sections untouched; appended at the end when the page has none, under
    `title` when the page is empty. The results pages that several studies write into (search_signal.md)."""
    if heading not in existing:
        head = existing.rstrip() + "\n\n" if existing.strip() else title
        return head + text
    before, _, rest = existing.partition(heading)
    after = re.search(r"^## ", rest, flags=re.M)
    return before + text + ("\n" + rest[after.start():] if after else "")


def print_or_write_section(text: str, page: Path | None, heading: str) -> None:
    """A study's section on stdout, or in place of its section of `page` (replace_section; the page is made if
    missing): the --write option of the analysis commands."""
    if page is None:
        print(text)
        return
    existing = page.read_text() if page.exists() else ""
    write_text(page, replace_section(existing, heading, text))


def method_key(label: str) -> tuple:
    """Sort key of a method label: AutoLoRA first, then LoRA, AdaLoRA, others; numbers as numbers (r=2 < r=16)."""
    family = label.split(" ")[0]
    order = METHOD_ORDER.index(family) if family in METHOD_ORDER else len(METHOD_ORDER)
    return order, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def cell(score: Score | None) -> str:
    """'78.68 ± 1.30', '58.60' for one seed, 'n/a' where a metric could not be computed, '' where absent."""
    if score is None:
        return ""
    if score["mean"] is None:
        return "n/a"
    if score["std"] is None:
        return f"{score['mean']:.2f}"
    return f"{score['mean']:.2f} ± {score['std']:.2f}"


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(value) for value in line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def row_label(row: Mapping[str, Any], models: bool, splits: bool, metric: str | None = None) -> str:
    """'glue/cola', plus ' · minilm' when the report holds several models, the split when several, the metric."""
    label = row["task"] + (f" · {row['model']}" if models else "")
    notes = [note for note, shown in ((metric, metric is not None), (row["split"], splits)) if shown]
    return label + (f" ({', '.join(notes)})" if notes else "")


def pivot(rows: Sequence[Mapping[str, Any]], metric: str | None) -> tuple[list[str], list[str], list[list[str]]]:
    """(row labels, methods, cells) of one metric over task x method; metric None = each task's main metric."""
    chosen = [row for row in rows if metric is None or metric in row["scores"]]
    models = len({row["model"] for row in rows}) > 1
    splits = len({row["split"] for row in rows}) > 1
    methods = sorted({row["method"] for row in chosen}, key=method_key)
    table: dict[str, dict[str, str]] = {}
    for row in chosen:
        name = metric or row["main_metric"]
        label = row_label(row, models, splits, None if metric else name)
        table.setdefault(label, {})[row["method"]] = cell(row["scores"].get(name))
    return list(table), methods, [[table[label].get(method, "") for method in methods] for label in table]


def pivot_markdown(rows: Sequence[Mapping[str, Any]], metric: str | None) -> str:
    """pivot() as a markdown table."""
    labels, methods, cells = pivot(rows, metric)
    return markdown_table(["task", *methods], [[label, *line] for label, line in zip(labels, cells, strict=True)])


LATEX_SPECIAL = {"±": r"$\pm$", "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell or caption."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def pivot_latex(rows: Sequence[Mapping[str, Any]], metric: str | None, caption: str) -> str:
    """One booktabs table (needs \\usepackage{booktabs}) of a metric over task x method."""
    labels, methods, cells = pivot(rows, metric)
    cells = [[c.replace("±", "$\\pm$") for c in line] for line in cells]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
             r"\begin{tabular}{l" + "r" * len(methods) + "}", r"\toprule",
             " & ".join(["task", *map(latex_escape, methods)]) + r" \\", r"\midrule"]
    lines += [" & ".join([latex_escape(label), *line]) + r" \\" for label, line in zip(labels, cells, strict=True)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per group: identifiers, then <metric>_mean / <metric>_std (numbers on the shown scale), then
    the remaining numeric columns; empty cells where a value does not apply."""
    metrics = list(dict.fromkeys(m for row in rows for m in row["scores"]))
    flat = []
    for row in rows:
        line = {}
        for key, value in row.items():
            if key != "scores":
                line[key] = value
                continue
            for metric in metrics:  # in place of the scores mapping: after the identifiers
                score = value.get(metric) or {"mean": None, "std": None}
                line[f"{metric}_mean"], line[f"{metric}_std"] = score["mean"], score["std"]
        flat.append({k: _number(v) if isinstance(v, float) else ("" if v is None else v) for k, v in line.items()})
    columns = list(dict.fromkeys(k for line in flat for k in line))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def _number(value: float | None) -> float | str:
    return "" if value is None else round(value, 6)


def _fixed(value: float | None, digits: int, empty: str = "") -> str:
    return empty if value is None else f"{value:.{digits}f}"


def details_markdown(rows: list[dict[str, Any]]) -> str:
    """Every group: seeds, main metric, mean rank, parameters, wall times, cost against the grid, gate spread."""
    header = ["task", "model", "method", "seeds", "main metric", "mean rank", "trainable params", "search s",
              "retrain s", "cost s", "cost / grid", "gate spread"]
    lines = [[row["task"], row["model"], row["method"], row["seeds"] if row["seeds"] == row["runs"] else
              f"{row['seeds']} ({row['runs']} runs)",
              f"{row['main_metric']} {cell(row['scores'].get(row['main_metric']))}",
              f"{row['mean_rank']:.2f}", f"{row['trainable_params']:,}", _fixed(row["search_s"], 1, "-"),
              f"{row['retrain_s']:.1f}", f"{row['cost_s']:.1f}",
              f"{row['cost_vs_grid']:.2f} (grid of {row['grid_size']})" if row.get("cost_vs_grid") is not None else "",
              _fixed(row["gate_spread_median"], 4)] for row in rows]
    return markdown_table(header, lines)


def verdict(row: Mapping[str, Any]) -> str:
    """What a group's agreement says, in words: beyond chance when the permutation p of rho is below 0.05."""
    if row["rank_spearman"] is None:
        return "every seed gives every matrix one rank" if row["pair_agreement"] == 1 else "n/a (a constant seed)"
    if row["rank_spearman_p"] < 0.05:
        return "ranks repeat beyond chance"
    return "no more agreement than chance"


AGREEMENT_TEXT = """For each AutoLoRA group with 2+ seeds: **pairs** = share of (seed pair, matrix) with the same \
rank, beside
the share expected by **chance** if each seed drew every matrix's rank from the group's pooled ranks;
**modal** = share of seeds on each matrix's most common rank; **ρ ranks** = Spearman's rho between the
per-matrix ranks of two seeds, mean over seed pairs, with its permutation p-value (matrix labels shuffled
within each seed, 2,000 times; small p = the seeds agree beyond chance); **ρ entropy** = the same for each
matrix's gate entropy; **gate spread** = median over matrices and seeds of max - min of the gates."""


def agreement_markdown(rows: Sequence[Mapping[str, Any]],
                       details: Sequence[tuple[list[int], list[tuple[str, list[int]]]] | None]) -> str:
    """The across-seed table, a plain count of what it shows, and per group (details: seeds and each matrix's
    rank per seed, aligned with rows) the ranks of each matrix by seed."""
    chosen = [(row, detail) for row, detail in zip(rows, details, strict=True) if "pair_agreement" in row]
    if not chosen:
        return ""
    header = ["task", "model", "method", "seeds", "pairs (chance)", "modal", "ρ ranks (p)", "ρ entropy (p)",
              "gate spread", "reading"]
    lines = [[row["task"], row["model"], row["method"], row["seeds"],
              f"{row['pair_agreement']:.2f} ({row['chance_agreement']:.2f})", f"{row['modal_agreement']:.2f}",
              "n/a" if row["rank_spearman"] is None else f"{row['rank_spearman']:+.2f} ({row['rank_spearman_p']:.2g})",
              "n/a" if row["entropy_spearman"] is None
              else f"{row['entropy_spearman']:+.2f} ({row['entropy_spearman_p']:.2g})",
              _fixed(row["gate_spread_median"], 4), verdict(row)] for row, _ in chosen]
    beyond = sum(verdict(row) == "ranks repeat beyond chance" for row, _ in chosen)
    out = ["## Do the seeds agree on the ranks?", "", AGREEMENT_TEXT, "",
           f"In {beyond} of {len(chosen)} groups the per-matrix ranks repeat across seeds "
           "beyond chance (p < 0.05).", "",
           markdown_table(header, lines)]
    for row, (seeds, matrices) in chosen:
        detail = [[name, " ".join(map(str, ranks)), f"{pair_agreement(ranks):.2f}", f"{modal_agreement(ranks):.2f}"]
                  for name, ranks in matrices]
        out += [f"<details><summary>{row['task']} · {row['model']} · {row['method']}: ranks per matrix (seeds "
                f"{' '.join(map(str, seeds))})</summary>", "",
                markdown_table(["matrix", "ranks by seed", "pairs", "modal"], detail), "</details>", ""]
    return "\n".join(out)
