"""benchmarks/search_ab.py's report: two versions' rows paired by budget, method and seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import search_ab


def _rows(
    path: Path,
    label: str,
    searched: list[float],
    walls: list[float],
    volumes: list[float] | None = None,
) -> None:
    rows = []
    for seed, (acc, wall) in enumerate(zip(searched, walls, strict=True)):
        for method, test in (("searched", acc), ("uniform-relevance", 0.88)):
            rows.append({
                "label": label, "budget": 0.2, "seed": seed, "method": method, "trial": 1,
                "val_accuracy": 0.9, "macs_ratio": 0.199, "test_accuracy": test,
                "search_wall_s": wall, "spearman": 0.5, "screened_out": 3,
            })  # fmt: skip
            if volumes is not None:
                rows[-1]["front_hypervolume"] = volumes[seed]
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


def test_report_pairs_front_hypervolumes_where_both_runs_recorded_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    walls = [100.0, 100.0, 100.0]
    _rows(tmp_path / "old.jsonl", "old", [0.88, 0.88, 0.88], walls)
    _rows(tmp_path / "default.jsonl", "default", [0.88, 0.88, 0.88], walls, [0.60, 0.62, 0.61])
    _rows(tmp_path / "depth.jsonl", "depth", [0.88, 0.88, 0.88], walls, [0.62, 0.62, 0.64])
    search_ab.report("old", "default", tmp_path)
    assert "hypervolume" not in capsys.readouterr().out  # the old rows have none
    search_ab.report("default", "depth", tmp_path)
    lines = capsys.readouterr().out.splitlines()
    # per seed +0.02, 0.00, +0.03: mean +0.0167, SE 0.0088
    assert lines[-1] == "| 0.2 | 0.6100 ± 0.0058 | 0.6267 ± 0.0067 | +0.0167 ± 0.0088 |"


def test_the_ablation_table_pairs_each_run_dimension_with_its_control(tmp_path: Path) -> None:
    walls = [200.0, 210.0, 220.0]
    _rows(tmp_path / "default.jsonl", "default", [0.880, 0.890, 0.885], walls, [0.60, 0.61, 0.62])
    # depth ran two seeds only: its row pairs those two
    _rows(tmp_path / "depth.jsonl", "depth", [0.890, 0.880], [250.0, 250.0], [0.62, 0.61])
    assert search_ab.ablation_table(tmp_path / "nothing") == []
    # two versions of the code on one space: auto-every-step against auto-once
    _rows(tmp_path / "auto-once.jsonl", "auto-once", [0.870, 0.870, 0.870], walls, [0.5] * 3)
    _rows(tmp_path / "auto-every-step.jsonl", "x", [0.880, 0.870, 0.860], walls, [0.5] * 3)
    lines = search_ab.ablation_table(tmp_path)
    assert len(lines) == 4, "header, rule and two rows: dimensions not run have none"
    assert lines[3].startswith("| auto-every-step |") and "| +0.00 ± 0.58 |" in lines[3]
    # a wall marked as not comparable leaves the cost, with its seed
    marked = [json.loads(line) for line in (tmp_path / "default.jsonl").read_text().splitlines()]
    for r in marked:
        if r["seed"] == 0:
            r["wall_note"] = "measured the base's sensitivity"
    (tmp_path / "default.jsonl").write_text("".join(json.dumps(r) + "\n" for r in marked))
    assert "| 210 -> 250 (seed 1) | 2 |" in search_ab.ablation_table(tmp_path)[2]
    row = lines[2].split(" | ")
    assert row[0] == "| depth" and "PLS-VIP" in row[1] and row[2] == "0.2"
    # seeds 0, 1: +1.0 and -1.0 pt -> +0.00 ± 1.00; hypervolume +0.02, 0.00 -> +0.0100 ± 0.0100
    assert row[3:9] == [
        "0.8850 ± 0.0050", "0.8850 ± 0.0050", "+0.00 ± 1.00", "+0.0100 ± 0.0100", "205 -> 250", "2 |"
    ]  # fmt: skip


def test_benchmarks_md_carries_the_ablation_table_when_rows_exist(tmp_path: Path) -> None:
    import peers_vs_search

    ab = tmp_path / "ab"
    ab.mkdir()
    _rows(ab / "default.jsonl", "default", [0.88, 0.89, 0.88], [200.0] * 3, [0.6, 0.6, 0.6])
    _rows(ab / "auto.jsonl", "auto", [0.89, 0.89, 0.89], [230.0] * 3, [0.6, 0.6, 0.6])
    rows = [
        {"network": "resnet20", "budget": 0.2, "seed": 0, "method": "uniform-l1", "kind": "uniform",
         "test_images": 10000, "test_accuracy": 0.88, "val_accuracy": 0.88, "macs_ratio": 0.2,
         "select_wall_s": 1.0, "select_epochs": 0.1, "finetune_wall_s": 1.0,
         "finetune_epochs": 0.3},
    ]  # fmt: skip
    meta = {"command": "c", "profile": "cpu", "date": "d", "machine": "m", "torch": "t",
            "settings": {"replay_epochs": 0.3}}  # fmt: skip
    doc = tmp_path / "benchmarks.md"
    peers_vs_search.write_markdown(rows, meta, doc, tmp_path / "images", ab)
    text = doc.read_text()
    assert "## Ablations: the search's own dimensions" in text
    assert "at equal fine-tune epochs" not in text  # no fronts measured
    assert "| auto | LAASP's loss-aware selection" in text and "| +0.67 ± 0.33 |" in text
    peers_vs_search.write_markdown(rows, meta, doc, tmp_path / "images", tmp_path / "none")
    assert "Ablations" not in doc.read_text()


def _front_rows(path: Path) -> None:
    rows = []
    for seed, (searched, uniform) in enumerate([(0.70, 0.66), (0.72, 0.70), (0.71, 0.66)]):
        for method, hv, each in (
            ("searched", searched, None), ("uniform-l1", uniform, 0.35),
            ("torch-pruning global (magnitude)", 0.60, 0.35),
            ("searched front's policies, fine-tuned again", searched + 0.01, 1.4 / 3),
        ):  # fmt: skip
            rows.append({
                "label": "default", "budget": 0.2, "seed": seed, "method": method,
                "hypervolume": hv, "points": [[0.2, 0.8]] * (4 if each == 0.35 else 3),
                "epochs_total": 1.4, "epochs_each": each,
            })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_front_table_pairs_each_hand_made_front_with_the_search(tmp_path: Path) -> None:
    _front_rows(tmp_path / "fronts-default.jsonl")
    lines = search_ab.front_table(tmp_path, "default")
    assert lines[2] == "| 0.2 | searched | 0.7100 ± 0.0058 | — | 1.4 (3 points) | 3 |"
    # per seed +0.04, +0.02, +0.05: mean +0.0367, SE 0.0088
    assert (
        lines[3] == "| 0.2 | uniform-l1 | 0.6733 ± 0.0133 | +0.0367 ± 0.0088 | 1.4 (4 x 0.35) | 3 |"
    )
    assert lines[4].startswith("| 0.2 | torch-pruning global (magnitude) | 0.6000 ± 0.0000 |")
    # The searched policies fine-tuned again after the search: its E, then E more over 3 points.
    assert lines[5] == (
        "| 0.2 | searched front's policies, fine-tuned again | 0.7200 ± 0.0058 | -0.0100 ± 0.0000"
        " | 1.4 + 1.4 (3 x 0.47) | 3 |"
    )


def test_benchmarks_md_carries_the_front_table_when_fronts_were_measured(tmp_path: Path) -> None:
    import peers_vs_search

    ab = tmp_path / "ab"
    ab.mkdir()
    _front_rows(ab / "fronts-default.jsonl")
    meta = {"command": "c", "profile": "cpu", "date": "d", "machine": "m", "torch": "t",
            "settings": {"replay_epochs": 0.3}}  # fmt: skip
    doc = tmp_path / "benchmarks.md"
    peers_vs_search.write_markdown([], meta, doc, tmp_path / "images", ab)
    text = doc.read_text()
    assert "## The whole front at equal fine-tune epochs" in text
    assert "| 0.2 | uniform-l1 | 0.6733 ± 0.0133 | +0.0367 ± 0.0088 | 1.4 (4 x 0.35) | 3 |" in text
