"""`star-elastic demo --quick` end to end: every configuration measured, the claims block, all files."""

import copy
import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from star_elastic import data
from star_elastic.demo import (BUDGETS, DemoSettings, Task, _points, claims, configuration_cost, curriculum,
                               dominated_pairs, render_markdown, switch_probe_steps)


def finite_numbers(tree):
    if isinstance(tree, dict):
        return all(finite_numbers(v) for v in tree.values())
    if isinstance(tree, list):
        return all(finite_numbers(v) for v in tree)
    if isinstance(tree, float):
        return math.isfinite(tree)
    return True


def test_configuration_cost_by_hand():
    # 3 thinking tokens + </think> at 10 bytes/token, 2 answer tokens at 30 bytes/token
    assert configuration_cost(10, 30, prompt_tokens=5, thinking_tokens=3, answer_tokens=2,
                              reprefill=False, rho=1.0) == 4 * 10 + 2 * 30
    # a re-prefill feeds prompt + thinking + </think> (9 tokens) at the answering budget, x rho
    assert configuration_cost(10, 30, prompt_tokens=5, thinking_tokens=3, answer_tokens=2,
                              reprefill=True, rho=0.5) == 4 * 10 + 2 * 30 + 0.5 * 9 * 30
    assert configuration_cost(10, 30, prompt_tokens=5, thinking_tokens=3, answer_tokens=2,
                              reprefill=True, rho=0.0) == 4 * 10 + 2 * 30


def _configuration(think, answer, accuracy, rho1, rho0=None, *, switch="reprefill", cap=None):
    return {"think": think, "answer": answer, "thinking_cap": cap, "switch": switch, "accuracy": accuracy,
            "cost": {"1.0": rho1, "0.0": rho1 if rho0 is None else rho0}}


def test_dominated_pairs_by_switch_and_rho():
    configurations = [
        _configuration("100%", "100%", 0.90, 1.00),
        _configuration("100%", "100%", 0.50, 0.80, cap=24),
        _configuration("100%", "100%", 0.00, 0.20, cap=0),  # solves nothing: no baseline
        _configuration("45%", "45%", 0.40, 0.45),
        _configuration("45%", "100%", 0.91, 1.60, 0.60),  # re-prefill: pays the thinking again at rho 1
        _configuration("100%", "45%", 0.95, 0.50, switch="transplant"),  # thinks large: not a candidate
        _configuration("45%", "100%", 0.60, 0.70, switch="transplant"),
    ]

    def pairs(rho, switch):
        return {(d["pair"], d["dominates"]) for d in dominated_pairs(configurations, rho, switch=switch)}

    assert pairs("1.0", "reprefill") == set()
    # more accurate than 45%->45% but costlier: no dominance either way
    assert pairs("0.0", "reprefill") == {("45%->100%", "100%->100%"), ("45%->100%", "100%->100% cap 24")}
    assert pairs("1.0", "transplant") == {("45%->100%", "100%->100% cap 24")}


def test_the_elastic_run_probes_around_the_stage_switch():
    # every 5 steps from 10 before the switch (step 80) to 10 after the long rows' 80-step ramp,
    # and the last step; without a ramp to 20 after the switch
    full = DemoSettings.full()
    assert switch_probe_steps(full) == [*range(70, 171, 5), 240]
    assert switch_probe_steps(dataclasses.replace(full, long_stage_ramp=0.0)) == [70, 75, 80, 85, 90, 95, 100, 240]
    quick = DemoSettings.quick()
    steps = switch_probe_steps(quick)
    assert quick.elastic_stage_steps[0] in steps and steps[-1] == quick.elastic_steps


def test_the_long_stage_ramps_its_long_rows_over_the_settings_share():
    settings = DemoSettings.full()
    task = Task(data.load_tokenizer("char"), torch.zeros(4, 60, dtype=torch.long),
                torch.ones(4, 60, dtype=torch.bool), 30, [])
    short, long = curriculum(settings, task, (80, 160))
    assert (short.seq_len, long.seq_len, short.ramp_steps, long.ramp_steps) == (30, 60, 0, 80)
    short, long = curriculum(dataclasses.replace(settings, long_stage_ramp=0.0), task, (120, 120))
    assert (short.ramp_steps, long.ramp_steps) == (0, 0)
    ramped = dataclasses.replace(settings, long_stage_ramp=1 / 3)
    assert [stage.ramp_steps for stage in curriculum(ramped, task, (120, 120))] == [0, 40]
    assert [stage.ramp_steps for stage in curriculum(ramped, task, (60, 60))] == [0, 20]  # a twin


def test_full_demo_caps_fall_inside_the_test_scratchpads():
    # a cap below the shortest scratchpad cuts every problem and a cap above the longest cuts none:
    # neither says how accuracy trades against thinking, so the sweep must have caps in between
    settings = DemoSettings.full()
    test = data.arithmetic_examples(settings.test_examples, min_digits=settings.long_digits[0],
                                    max_digits=settings.long_digits[1], seed=1000)
    lengths = sorted(len(data.load_tokenizer("char").encode(e.thinking)) for e in test)
    fits = [sum(n <= cap for n in lengths) / len(lengths) for cap in settings.thinking_caps]
    inside = [f for f in fits if 0.05 < f < 0.95]
    assert len(inside) >= 2, (settings.thinking_caps, lengths[0], lengths[-1], fits)


@pytest.mark.slow
def test_quick_demo_reports_every_configuration_and_the_claims(tmp_path):
    result = subprocess.run([sys.executable, "-m", "star_elastic.cli", "demo", "--quick", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    names = [name for name, _ in BUDGETS]
    assert list(results["budgets"]) == names
    assert finite_numbers({k: v for k, v in results.items() if k != "claims"})

    # The claims block, exactly the documented schema.
    block = results["claims"]
    assert set(block) == {"test_problems", "seeds", "nested_vs_separate", "frontier"}
    assert block["test_problems"] == results["settings"]["test_examples"] and block["seeds"] == [0]
    assert [row["budget"] for row in block["nested_vs_separate"]] == names[1:]
    for row in block["nested_vs_separate"]:
        assert set(row) == {"budget", "elastic", "separate_equal_compute", "separate_equal_steps"}
        assert all(0.0 <= row[k] <= 1.0 for k in row if k != "budget")
        assert row["elastic"] == results["budgets"][row["budget"]]["accuracy"]
    caps = [None, *results["settings"]["thinking_caps"]]
    assert {(f["think"], f["answer"], f["thinking_cap"]) for f in block["frontier"]} == {
        (t, a, cap) for t in names for a in names for cap in caps}
    for f in block["frontier"]:
        assert set(f) == {"think", "answer", "thinking_cap", "accuracy", "cost"}
        assert 0.0 <= f["accuracy"] <= 1.0 and f["cost"] > 0
    full = next(f for f in block["frontier"] if f["think"] == f["answer"] == "100%" and f["thinking_cap"] is None)
    assert full["cost"] == 1.0
    smallest = next(f for f in block["frontier"] if f["think"] == f["answer"] == "45%" and f["thinking_cap"] is None)
    assert smallest["cost"] < 1.0

    for name, budget in results["budgets"].items():
        assert budget["slicing_max_abs_error"] < 1e-4, name  # sliced == masked parent
    assert results["permutation_max_abs_error"] < 1e-4
    assert results["budgets"]["100%"]["active_fraction"] == 1.0
    assert results["budgets"]["45%"]["active_params"] < results["budgets"]["100%"]["active_params"]
    assert sorted(results["layer_order"]) == list(range(len(results["settings"]["layer_pattern"])))
    assert "depth" in results["router"]["axes"] and "moe_experts" in results["router"]["not_routed"]
    assert len(results["transplant"]) == 6
    for name in names[1:]:
        arms = results["training_cost"]["separate"][name]
        assert arms["equal_compute"]["steps"] == results["training_cost"]["elastic_run"]["steps"] // 2
        assert arms["equal_steps"]["steps"] == results["training_cost"]["elastic_run"]["steps"]
        assert 0 < arms["equal_compute"]["flops"] < arms["equal_steps"]["flops"]
    # The KD probes around the stage switch: every budget, both kinds of problem, every probed step.
    switch = results["curriculum"]
    probe = switch["probe"]
    assert switch["switch_step"] in probe["steps"] and probe["steps"] == sorted(probe["steps"])
    assert probe["steps"][-1] == results["training_cost"]["elastic_run"]["steps"]
    for name in names:
        assert set(probe[name]) == {"short", "long"} == set(probe["rows"])
        assert all(len(values) == len(probe["steps"]) for values in probe[name].values())
        for kind in ("short", "long"):
            at_switch = probe[name][kind][probe["steps"].index(switch["switch_step"])]
            assert switch[name][f"probe_{kind}"]["at_switch"] == at_switch > 0
    markdown = (tmp_path / "results.md").read_text()
    assert "(a) Every nested budget" in markdown and "(b) at rho = 1" in markdown
    assert "KD on fixed probe problems" in markdown
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "elastic" / "budgets.json").exists()
    for name in names:
        assert any((tmp_path / "budgets" / name).iterdir())

    # Several seeds: the claims are the means over the runs.
    other = copy.deepcopy(results)
    other["seed"] = 1
    for row in other["configurations"]:
        row["accuracy"] = 1.0 - row["accuracy"]
    for arms in other["training_cost"]["separate"].values():
        arms["equal_compute"]["accuracy"] = 0.25
    for budget in other["budgets"].values():
        budget["accuracy"] = 0.5
    both = claims([results, other])
    assert both["seeds"] == [0, 1]
    assert all(f["accuracy"] == pytest.approx(0.5) for f in both["frontier"])
    for row in both["nested_vs_separate"]:
        name = row["budget"]
        assert row["elastic"] == pytest.approx((results["budgets"][name]["accuracy"] + 0.5) / 2)
        assert row["separate_equal_compute"] == pytest.approx(
            (results["training_cost"]["separate"][name]["equal_compute"]["accuracy"] + 0.25) / 2)
    assert " ± " in render_markdown({"claims": both}, [results, other])


def test_accuracy_differences_read_as_signed_points():
    assert _points(-0.031) == "−3.1 pt"
    assert _points(0.02) == "+2.0 pt"
