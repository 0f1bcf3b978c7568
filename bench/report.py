"""Turn a device_check.sh run ($OUT: steps.txt, tests.xml, bench.json, info.json) into report.md
and report.json: the commit, the GPU, test counts and one line per benchmark."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: int(suite.get(k, 0)) for k in keys}


def benchmark_rows(bench: dict | None) -> list[dict]:
    rows = []
    for b in (bench or {}).get("benchmarks", []):
        info = b.get("extra_info", {})
        rows.append({
            "group": b.get("group"),
            "name": b["name"],
            "median_us": info.get("median_us"),
            "gbs": info.get("gbs"),
            "tflops": info.get("tflops"),
            "floor_fraction": info.get("floor_fraction"),
        })
    return rows


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args()
    bench = _load_json(args.out / "bench.json")
    report = {
        "commit": args.commit,
        "machine": (bench or {}).get("machine_info"),
        "info": _load_json(args.out / "info.json"),
        "steps": (args.out / "steps.txt").read_text().splitlines()
        if (args.out / "steps.txt").exists() else [],
        "tests": test_counts(args.out / "tests.xml"),
        "benchmarks": benchmark_rows(bench),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    gpu = (report["machine"] or {}).get("gpu", "unknown GPU")
    lines = [f"# Device check at {args.commit} on {gpu}", "", "## Steps", ""]
    lines += [f"- {s}" for s in report["steps"]]
    lines += ["", f"## Tests: {report['tests']}", "", "## Benchmarks", "",
              "| group | name | median µs | GB/s | TFLOP/s | floor fraction |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in report["benchmarks"]:
        lines.append(f"| {r['group']} | {r['name']} | {_fmt(r['median_us'], '.1f')} | "
                     f"{_fmt(r['gbs'], '.0f')} | {_fmt(r['tflops'], '.1f')} | "
                     f"{_fmt(r['floor_fraction'], '.2f')} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
