"""`star-elastic demo --quick` end to end: every budget and pair measured, all files written."""

import json
import math
import subprocess
import sys

import pytest


def finite_numbers(tree):
    if isinstance(tree, dict):
        return all(finite_numbers(v) for v in tree.values())
    if isinstance(tree, list):
        return all(finite_numbers(v) for v in tree)
    if isinstance(tree, float):
        return math.isfinite(tree)
    return True


@pytest.mark.slow
def test_quick_demo_covers_every_budget_and_pair(tmp_path):
    result = subprocess.run([sys.executable, "-m", "star_elastic.cli", "demo", "--quick", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    budgets = set(results["budgets"])
    assert budgets == {"100%", "70%", "45%"}
    assert {(p["think"], p["answer"]) for p in results["pairs"].values()} == {
        (t, a) for t in budgets for a in budgets}
    assert finite_numbers(results)
    for name, budget in results["budgets"].items():
        assert 0.0 <= budget["accuracy"] <= 1.0 and budget["seconds_per_problem"] > 0
        assert budget["slicing_max_abs_error"] < 1e-4, name  # sliced == masked parent
    assert results["permutation_max_abs_error"] < 1e-4
    assert results["budgets"]["100%"]["active_fraction"] == 1.0
    assert results["budgets"]["45%"]["active_params"] < results["budgets"]["100%"]["active_params"]
    mixed = {key for key, p in results["pairs"].items() if p["think"] != p["answer"]}
    assert set(results["transplant"]) == mixed and len(mixed) == 6
    for key, t in results["transplant"].items():
        assert 0.0 <= t["accuracy"] <= 1.0
        assert t["reprefill_accuracy"] == results["pairs"][key]["accuracy"]
        assert t["accuracy_cost"] == pytest.approx(t["reprefill_accuracy"] - t["accuracy"])
    cost = results["training_cost"]
    assert set(cost["separate_runs"]) == {"70%", "45%"} and cost["elastic_run"]["seconds"] > 0
    markdown = (tmp_path / "results.md").read_text()
    assert all(f"| {a}->{b} |" in markdown for a in budgets for b in budgets)
    assert "Cache transplant" in markdown
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "elastic" / "budgets.json").exists()
    for name in budgets:
        assert any((tmp_path / "budgets" / name).iterdir())
