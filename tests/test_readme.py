"""The README's "Your own data and model" commands, then its adapter-loading snippets, run as written
(a tiny budget appended; the model folders are tiny random ones), so the README cannot drift from the code."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys

import pytest
from conftest import REPO

from autolora.tasks import metrics

README = (REPO / "README.md").read_text()
# appended to every README command: a few CPU seconds each, no W&B. Two search steps, no warm-up: B starts at 0, so
# alpha's first hypergradient is ~0 and a one-step search leaves every gate at 1/k, undecided (search.min_rank = 0:
# nothing to retrain)
BUDGET = ["logger=none", "device=cpu", "progress=false", "data.max_train_samples=8", "search.epochs=1",
          "search.warmup_ratio=0.0", "retrain.epochs=1", "search.batch_size=2", "retrain.batch_size=8"]
GENERATION_BUDGET = ["search.evaluate=false", "task.generation.num_beams=1", "task.generation.max_new_tokens=4"]


def blocks_after(marker: str, language: str) -> list[str]:
    """The fenced code blocks of `language` from the HTML comment `marker` up to the next heading."""
    start = README.index(f"<!-- {marker}")
    section = re.split(r"\n##+ ", README[start:], maxsplit=1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def readme_commands() -> tuple[dict[str, str], list[list[str]]]:
    """(the VAR=value lines, the commands as word lists) of the own-data block; continuations joined."""
    [block] = blocks_after("own-data commands", "bash")
    variables, commands = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if re.fullmatch(r"[A-Z]+=\S+", line):
            name, value = line.split("=", 1)
            variables[name] = value
        elif line:
            commands.append(shlex.split(line))
    return variables, commands


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory, model_folders):
    """Every command of the README's own-data block, run through the console script's main() in a scratch
    working directory; the README's DATA, MODEL and DECODER lines point at the fixtures and tiny folders."""
    from autolora.analysis import report
    from autolora.cli.main import main

    variables, commands = readme_commands()
    assert {words[0] for words in commands} == {"autolora-run", "autolora-report"}
    assert set(variables) == {"DATA", "MODEL", "DECODER"} and variables["DATA"] == "tests/fixtures/own"
    values = {"DATA": str(REPO / variables["DATA"]), "MODEL": str(model_folders["my-bert"]),
              "DECODER": str(model_folders["my-gpt2"])}
    work = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setattr(metrics, "caption_scores",  # METEOR, ROUGE-L, CIDEr: Java's start-up takes seconds a call
                      lambda hypotheses, references: dict.fromkeys(metrics.CAPTION_METRICS))
        for words in commands:
            args = [re.sub(r"\$([A-Z]+)", lambda m: values[m.group(1)], word) for word in words]
            if args[0] == "autolora-report":  # autolora-report FOLDER ...
                assert report.main(args[1:]) == 0
                continue
            extra = GENERATION_BUDGET if "task=generation" in args else []
            patch.setattr(sys, "argv", ["autolora-run", *args[1:], *BUDGET, *extra])
            main()
    return work, len(commands)


def runs_under(folder) -> dict[str, dict]:
    """metrics.json of every run below folder, by its path relative to folder."""
    return {str(p.parent.relative_to(folder)): json.loads(p.read_text()) for p in folder.rglob("metrics.json")}


def test_readme_commands_run_as_written(readme_runs):
    """Classification, regression, CoNLL NER and JSONL generation with local model folders, each in
    outputs/<task.name>/<model folder>/autolora/, and the two-seed sweep of two methods in multirun/."""
    work, count = readme_runs
    assert count == 6
    single = {path.split("/")[0]: m for path, m in runs_under(work / "outputs").items()}
    assert set(single) == {"reviews", "similarity", "people_places", "menu"}
    assert all(path.split("/")[1:3] in (["my-bert", "autolora"], ["my-gpt2", "autolora"])
               for path in runs_under(work / "outputs"))
    assert set(single["reviews"]["retrain"]["dev"]) == {"accuracy", "macro_f1"}
    assert set(single["similarity"]["retrain"]["dev"]) == {"pearson", "spearman"}
    assert (single["people_places"]["retrain"]["eval_split"] == "test"
            and "f1" in single["people_places"]["retrain"]["test"])
    assert single["menu"]["model"] == "my-gpt2" and "bleu" in single["menu"]["retrain"]["dev"]
    swept = runs_under(work / "multirun")
    assert sorted((m["method"], m["seed"]) for m in swept.values()) == [("autolora", 0), ("autolora", 1),
                                                                       ("lora", 0), ("lora", 1)]
    names = {path.split("/")[-1]: (m["method"], m["seed"]) for path, m in swept.items()}
    for name, (method, seed) in names.items():  # named by the job's overrides, paths left out
        assert re.match(r"\d_", name) and f"method={method}," in name and f"seed={seed}," in name, name
        assert "data.data_dir" not in name and "model.path" not in name and "train_file" not in name, name


@pytest.mark.parametrize("index, task", [(0, "reviews"), (1, "people_places"), (2, "menu")])
def test_readme_adapter_snippets_run_as_written(readme_runs, index, task):
    """Each loading snippet, with only its adapter path pointed at the README run of its task, loads the
    adapter (base model, tokenizer and labels from the folder itself) and predicts."""
    work, _ = readme_runs
    [adapter] = (work / "outputs" / task).glob("*/autolora/*/adapter")
    code = blocks_after("adapter snippets", "python")[index]
    code, replaced = re.subn(r'^adapter = "[^"]+"', f'adapter = "{adapter}"', code, flags=re.M)
    assert replaced == 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"README.md snippet {index}", "exec"), {})  # noqa: S102
    out = printed.getvalue().strip()
    labels = json.loads((adapter / "labels.json").read_text()) if (adapter / "labels.json").exists() else None
    if task == "reviews":
        assert out in labels
    elif task == "people_places":
        pairs = eval(out)  # noqa: S307 -- the snippet prints a list of (word, tag) tuples
        assert ([w for w, _ in pairs] == ["Ada", "Okoro", "moved", "to", "Tartu"]
                and {t for _, t in pairs} <= set(labels))
    else:
        assert labels is None and printed.getvalue().endswith("\n")  # generated text printed (any, untrained)


def test_readme_report_is_a_task_by_method_table(readme_runs):
    """The README's report command leaves a task x method pivot of the sweep: AutoLoRA and LoRA r=8 columns,
    mean ± std over the two seeds, and numeric mean/std columns in the CSV."""
    work, _ = readme_runs
    page = (work / "multirun" / "report" / "multirun.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| reviews"))
    assert row.count("±") >= 2, row
    assert "AutoLoRA" in page and "LoRA r=8" in page
    header = (work / "multirun" / "report" / "multirun.csv").read_text().splitlines()[0]
    assert "accuracy_mean" in header and "accuracy_std" in header
