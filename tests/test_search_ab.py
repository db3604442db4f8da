"""benchmarks/search_ab.py's report: two versions' rows paired by budget, method and seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import search_ab


def _rows(path: Path, label: str, searched: list[float], walls: list[float]) -> None:
    rows = []
    for seed, (acc, wall) in enumerate(zip(searched, walls, strict=True)):
        for method, test in (("searched", acc), ("uniform-relevance", 0.88)):
            rows.append({
                "label": label, "budget": 0.2, "seed": seed, "method": method, "trial": 1,
                "val_accuracy": 0.9, "macs_ratio": 0.199, "test_accuracy": test,
                "search_wall_s": wall, "spearman": 0.5, "screened_out": 3,
            })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_pairs_the_two_versions_by_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rows(tmp_path / "before.jsonl", "before", [0.880, 0.890, 0.885], [300.0, 290.0, 310.0])
    _rows(tmp_path / "after.jsonl", "after", [0.890, 0.890, 0.895], [200.0, 230.0, 220.0])
    search_ab.report("before", "after", tmp_path)
    lines = capsys.readouterr().out.splitlines()
    searched = next(line for line in lines if "| searched |" in line)
    # per seed +1.0, 0.0, +1.0 pt: mean +0.67, SE 0.33
    assert searched == "| 0.2 | searched | 0.8850 ± 0.0029 | 0.8917 ± 0.0017 | +0.67 ± 0.33 | 3 |"
    baseline = next(line for line in lines if "uniform-relevance" in line)
    assert baseline.endswith("| +0.00 ± 0.00 | 3 |")
    # walls -100, -60, -90 s: mean -83, SE 12
    assert lines[-1] == "| 0.2 | 300 | 217 | -83 ± 12 |"
