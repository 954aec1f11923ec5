"""make bench's report (bench.tables) from made-up timings: the auto rows and totals, the ratios to peft's
compiled step, issue #28's checks and the markdown (the timings themselves come from the GPU only)."""

from __future__ import annotations

import copy

from autolora.bench import steps as bench
from autolora.bench import tables


def row(ms: float, warmup_s: float, peak_mib: float = 1000.0) -> dict:
    return {"ms": ms, "spread_ms": 0.1, "peak_mib": peak_mib, "warmup_s": warmup_s, "tokens_per_s": 1000, "mfu": None}


def entry(modes=("eager", "graphs", "inductor")) -> dict:
    """A gpt2-medium@32x256 shape with invented timings: inductor fast but slow to warm up."""
    times = {"eager": (150.0, 1.0), "graphs": (100.0, 2.0), "inductor": (40.0, 60.0)}
    out = {"peft_lora": row(120.0, 1.0, 2000.0), "peft_compiled": row(50.0, 30.0, 2000.0)}
    for which in tables.OURS:
        factor = 1 if which == "fixed_rank" else 3
        for mode in modes:
            ms, warmup = times[mode]
            out[f"{which}/{mode}"] = row(ms * factor, warmup * factor, 1500.0)
    return out


STEPS = {"fixed_rank": 2000, "first_order": 100, "second_order": 100, "second_order_central": 100}


def test_assumed_steps_count_the_retrain_over_all_rows_and_the_search_over_half():
    """100 rows, batch 16: the retrain 2 epochs x 7 batches, the search 1 epoch over 50 rows (4 batches)."""
    assert tables.assumed_steps(100, 1, 2, 16) == {"fixed_rank": 14, "first_order": 4, "second_order": 4,
                                                   "second_order_central": 4}
    assert bench.run_steps("minilm", 16)["fixed_rank"] == 2 * 4210  # SST-2's 67,349 rows, glue/sst2's 2 epochs
    assert bench.run_steps("minilm", 16, override=7) == dict.fromkeys(tables.OURS, 7)


def test_auto_rows_record_the_pick_its_steps_and_every_total():
    """2000 retrain steps repay gpt2-medium's inductor warm-up (table: 67 ms saved, 56 s): auto picks inductor
    there and graphs for the 100-step search; every row gains steps and total = warm-up + steps x ms."""
    timed = entry()
    timed.update(tables.auto_rows(timed, "gpt2-medium", 32, 256, STEPS))
    auto = timed["fixed_rank/auto"]
    assert (auto["picked"], auto["steps"], auto["ms"], auto["timed"]) == ("inductor", 2000, 40.0, True)
    assert auto["total_s"] == 60.0 + 2000 * 0.040 and auto["reason"].startswith("inductor: 2000 steps")
    assert timed["second_order/auto"]["picked"] == "graphs"
    assert timed["fixed_rank/eager"]["total_s"] == 1.0 + 2000 * 0.150
    assert timed["second_order/graphs"]["steps"] == 100
    unknown = tables.auto_rows(entry(), "minilm", 32, 256, STEPS)  # no measured cost: graphs
    assert {r["picked"] for r in unknown.values()} == {"graphs"}


def test_ratios_lead_with_peft_compiled_and_checks_follow_the_issue_bar():
    """Ratios to peft compiled and eager; the fastest captured step is checked against 3.0x / 1.0x peft compiled,
    its memory where peft's is over 1 GiB, auto's total against the best mode's (within 10%)."""
    timed = entry()
    timed.update(tables.auto_rows(timed, "gpt2-medium", 32, 256, STEPS))
    ratios = tables.ratios(timed, ["eager", "graphs", "inductor", "auto"])
    assert ratios["inductor"]["fixed_rank_ratio_vs_compiled"] == 0.8
    assert ratios["inductor"]["fixed_rank_ratio"] == round(40 / 120, 3)
    assert ratios["auto"]["second_order_ratio_vs_compiled"] == 6.0  # graphs' 300 ms
    assert ratios["peft_compiled"] == round(50 / 120, 3)
    checks = tables.checks(timed)
    assert checks["fixed_rank"] == {"mode": "inductor", "ratio": 0.8, "ok": True}
    assert checks["second_order"] == {"mode": "inductor", "ratio": 2.4, "ok": True}
    assert checks["memory"] == {"mode": "inductor", "ratio": 0.75, "ok": True}
    assert checks["fixed_rank_auto_total"] == {"picked": "inductor", "best": "inductor", "ratio": 1.0, "ok": True}
    small_peft = copy.deepcopy(timed)
    small_peft["peft_compiled"]["peak_mib"] = 500.0
    assert tables.checks(small_peft)["memory"] is None  # under 1 GiB: not judged


def test_a_wrong_auto_pick_and_a_slow_step_are_flagged():
    """When inductor warms up in 1 s, graphs (auto's table pick for 100 search steps) costs 2.7x inductor's total:
    over the 10% bar; a fixed-rank step slower than peft compiled fails its check."""
    timed = entry()
    for which in tables.OURS[1:]:
        timed[f"{which}/inductor"]["warmup_s"] = 1.0
    timed["fixed_rank/inductor"]["ms"] = timed["fixed_rank/graphs"]["ms"] = 60.0
    timed.update(tables.auto_rows(timed, "gpt2-medium", 32, 256, STEPS))
    checks = tables.checks(timed)
    assert checks["second_order_auto_total"]["best"] == "inductor" and not checks["second_order_auto_total"]["ok"]
    assert checks["fixed_rank"]["ratio"] == 1.2 and not checks["fixed_rank"]["ok"]


def test_an_untimed_pick_is_reported_not_guessed():
    """Modes eager and graphs only: auto's inductor pick has no timings, no ratios and no check, and says so."""
    timed = entry(("eager", "graphs"))
    timed.update(tables.auto_rows(timed, "gpt2-medium", 32, 256, STEPS))
    assert timed["fixed_rank/auto"]["timed"] is False and "ms" not in timed["fixed_rank/auto"]
    assert "auto" not in tables.ratios(timed, ["eager", "graphs", "auto"])
    assert tables.checks(timed)["fixed_rank_auto_total"] is None


def test_markdown_shows_the_headline_columns_auto_rows_and_checks():
    """OUT.md: ratio to peft compiled beside peft eager, the auto row's pick, steps and total, the checks table
    with over-the-bar cells marked."""
    timed = entry()
    timed["fixed_rank/inductor"]["ms"] = timed["fixed_rank/graphs"]["ms"] = 60.0
    timed.update(tables.auto_rows(timed, "gpt2-medium", 32, 256, STEPS))
    timed["ratios"] = tables.ratios(timed, ["eager", "graphs", "inductor", "auto"])
    timed["checks"] = tables.checks(timed)
    report = {"command": "python -m autolora.bench", "commit": "abc", "device": "GPU", "date": "2026-01-01",
              "versions": {"torch": "x"}, "steps": 20, "warmup": 3, "modes": ["eager", "graphs", "inductor", "auto"],
              "shapes": {"gpt2-medium@32x256": timed}}
    text = tables.markdown(report)
    assert "| shape | step | ms | vs peft compiled | vs peft eager |" in text
    assert "| gpt2-medium@32x256 | fixed_rank/auto -> inductor | 60.00 | 1.20x | 0.50x |" in text
    assert "| 2000 | 180.0 |" in text  # steps and total = 60 s + 2000 x 60 ms
    assert "Ratios of our steps (auto)" in text
    assert "1.2 (graphs) **over**" in text  # graphs and inductor tie at 60 ms
    assert "1.475 (inductor; best graphs) **over**" in text  # inductor's 60 s warm-up bought nothing here


def test_a_bench_of_two_step_kinds_gets_their_rows_ratios_checks_and_table_only():
    """bench --kinds fixed_rank second_order (issue #28's bar): auto rows, ratios and the markdown cover the two
    kinds; the untimed kinds get no auto row, and their ratio cells read '—', not a number."""
    timed = {label: r for label, r in entry().items()
             if label.startswith(("peft", "fixed_rank/", "second_order/"))}
    timed.update(tables.auto_rows(timed, "gpt2-medium", 32, 256, STEPS))
    assert sorted(k for k in timed if k.endswith("/auto")) == ["fixed_rank/auto", "second_order/auto"]
    timed["ratios"] = tables.ratios(timed, ["eager", "graphs", "inductor", "auto"])
    assert timed["ratios"]["inductor"]["second_order_ratio_vs_compiled"] == 2.4
    assert "first_order_ratio" not in timed["ratios"]["inductor"]
    timed["checks"] = tables.checks(timed)
    assert timed["checks"]["second_order"]["ok"] and timed["checks"]["first_order_auto_total"] is None
    report = {"command": "c", "commit": "abc", "device": "GPU", "date": "2026-01-01", "versions": {"torch": "x"},
              "steps": 20, "warmup": 3, "modes": ["inductor"], "shapes": {"gpt2-medium@32x256": timed}}
    assert "| gpt2-medium@32x256 | 2.4 | 0.8 | 0.75 | 1.0 | — | 0.333 | 0.75 | — | 0.417 |" in tables.markdown(report)


def test_the_bench_times_only_the_step_kinds_asked_for():
    assert bench.variant_names(["graphs"], ["second_order"]) == [
        ("peft_lora", "eager"), ("peft_compiled", "inductor"), ("second_order", "graphs")]


def test_parts_of_a_split_bench_join_into_one_report_and_mismatched_parts_fail(tmp_path, capsys):
    """Disjoint shapes join (commands and dates listed); parts from another commit, or sharing a shape, fail in
    one line with status 2."""
    import json

    import pytest

    base = {"command": "bench A", "commit": "abc", "device": "GPU", "date": "2026-01-01", "peak_bf16_tflops": 1.0,
            "versions": {"torch": "x"}, "steps": 20, "warmup": 3, "modes": ["eager"], "shapes": {"m@1x1": {"a": 1}}}
    other = {**base, "command": "bench B", "date": "2026-01-02", "shapes": {"m@2x2": {"b": 2}}}
    joined = tables.merge([base, other])
    assert joined["shapes"] == {"m@1x1": {"a": 1}, "m@2x2": {"b": 2}}
    assert joined["command"] == "bench A ; bench B" and joined["date"] == "2026-01-01, 2026-01-02"
    with pytest.raises(ValueError, match="differ in commit"):
        tables.merge([base, {**other, "commit": "def"}])
    with pytest.raises(ValueError, match="shape m@1x1 is in more than one part"):
        tables.merge([base, {**other, "shapes": base["shapes"]}])
    paths = []
    for i, part in enumerate([base, {**other, "commit": "def"}]):
        paths.append(tmp_path / f"p{i}.json")
        paths[-1].write_text(json.dumps(part))
    with pytest.raises(SystemExit) as stop:
        tables.main(["--merge", *map(str, paths), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("bench.tables: error: the parts differ")
    assert not (tmp_path / "out.json").exists()


def test_a_part_that_is_missing_broken_or_not_a_report_is_named_in_one_line(tmp_path, capsys):
    import pytest

    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nan.json").write_text('{"shapes": {}, "x": NaN}')  # save writes a NaN as null
    for name, message in [("absent.json", "absent.json: file not found"),
                          ("broken.json", "broken.json: not valid JSON (Expecting"),
                          ("nan.json", "nan.json: not valid JSON (line 1: NaN is not a number"),
                          ("list.json", "list.json: not a bench report")]:
        with pytest.raises(SystemExit) as stop:
            tables.main(["--merge", str(tmp_path / name), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"bench.tables: error: {tmp_path / message}" in err, err
    assert not (tmp_path / "out.json").exists()


def test_the_bench_writes_over_its_own_files_only(tmp_path):
    """OUT.json/OUT.md of an earlier bench are replaced (the committed results/bench.* pass as the bench's own);
    a user's OUT.md or OUT.json with the same name is kept and named."""
    import json

    import pytest
    from conftest import REPO

    committed = REPO / "results" / "bench"
    tables.check_out(committed)  # the committed pair is the bench's own: a re-bench replaces it
    report = json.loads(committed.with_suffix(".json").read_text())
    out = tmp_path / "bench"
    tables.save(out, report)
    tables.save(out, report)  # again: over its own files
    assert json.loads(out.with_suffix(".json").read_text()) == report
    assert out.with_suffix(".md").read_text() == tables.markdown(report)
    out.with_suffix(".md").write_text("# my notes\n")
    with pytest.raises(ValueError, match=r"bench.md: not a page the bench wrote"):
        tables.save(out, report)
    assert out.with_suffix(".md").read_text() == "# my notes\n"
    out.with_suffix(".md").unlink()
    out.with_suffix(".json").write_text('{"mine": true}')
    with pytest.raises(ValueError, match=r"bench.json: not a bench report"):
        tables.save(out, report)
    assert out.with_suffix(".json").read_text() == '{"mine": true}' and not out.with_suffix(".md").exists()
