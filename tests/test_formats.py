"""``--format table|json|yaml`` of ``studies``, ``show`` and ``inspect``: scripts get the data.

JSON and YAML go to stdout alone (so ``json.loads`` of the whole output works) and hold what
the table shows: every front point's metrics, criteria and the policy file it is exported to.
The slow test runs a real (tiny) search of the embedded default and reads it back through
``show --format json``, ``autoprune plot`` and Optuna's own CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import FAST_SPACE

from autoprune import study as studies
from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.export import export_front
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy

SPEC = ModelSpec("resnet20", 10, (1, 28, 28))


def _written_study(tmp_path: Path, objective: str = "macs") -> str:
    """A study with a baseline, two front points, a dominated and a failed trial; its URL."""
    tmp_path.mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    config = SearchConfig(
        objective=objective, budget_latency=0.6 if objective != "macs" else None, study="f"
    )
    storage = studies.open_storage(url)
    study = studies.create_or_load(storage, "f", config, optuna.samplers.RandomSampler(0))
    studies.save_config(study, config)
    policy = Policy(SPEC, {"layer1.0.conv1": GroupPolicy(0.5, "taylor")}).to_dict()
    for accuracy, macs, baseline in ((0.95, 0.499, "uniform-l1"), (0.97, 0.495, None), (0.9, 0.3, None), (0.8, 0.492, None)):  # fmt: skip
        trial = study.ask()
        if baseline:
            trial.set_user_attr(studies.BASELINE_ATTR, baseline)
        result: dict[str, Any] = {
            "val_accuracy": accuracy, "macs_ratio": macs, "params_ratio": macs + 0.1,
            "proxy_accuracy": accuracy - 0.3, "policy": policy,
        }  # fmt: skip
        if objective != "macs":
            result.update(latency_ratio=macs + 0.05, latency_ms=10 * macs)
        studies.finish_trial(study, trial, result, budget=config.budgets())
    studies.finish_trial(study, study.ask(), {"error": "CUDA out of memory\ntraceback"}, 0.5)
    return url


def _stdout(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_show_json_holds_every_front_point_and_its_policy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _written_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    report = json.loads(_stdout(capsys, "show", "f", "--storage", url, "--format", "json"))
    assert report["study"] == "f" and report["objective"] == "macs"
    assert report["metric_names"] == ["val_accuracy", "macs_ratio"] and report["budget"] == 0.5
    assert report["trials"] == {
        "complete": 4, "screened_out": 0, "failed": 1, "running": 0, "waiting": 0
    }  # fmt: skip
    front = {p["trial"]: p for p in report["front"]}
    assert sorted(front) == [1, 2]
    assert front[1]["val_accuracy"] == 0.97 and front[1]["macs_ratio"] == 0.495
    assert front[1]["params_ratio"] == pytest.approx(0.595) and front[1]["latency_ratio"] is None
    assert front[1]["criteria"] == {"taylor": 1} and front[1]["blocks_dropped"] == []
    assert front[1]["source"] == "searched"
    assert front[1]["policy_file"] == "policies/f/trial-0001.yaml"
    assert front[1]["policy_file_exists"] is False  # not exported yet
    assert [b["name"] for b in report["baselines"]] == ["uniform-l1"]
    assert report["baselines"][0]["policy_file"] == "policies/f/baseline-uniform-l1.yaml"
    assert report["winner"]["trial"] == 1 and report["winner"]["at_budget"] is True
    assert report["best_searched"]["trial"] == 1
    assert report["best_baseline"]["name"] == "uniform-l1"
    assert report["proxy_spearman"] == {"rho": pytest.approx(1.0), "trials": 3}
    # front (0.3, 0.90), (0.495, 0.97) up to (1.0, 0.1): 0.195 x 0.80 + 0.505 x 0.87
    assert report["hypervolume"] == {
        "value": pytest.approx(0.195 * 0.80 + 0.505 * 0.87),
        "reference": {"macs_ratio": 1.0, "val_accuracy": 0.1},
    }
    table = _stdout(capsys, "show", "f", "--storage", url)
    assert "front hypervolume (val acc against MACs ratio, reference 1 / 0.1): 0.5954" in table
    assert report["failed_trials"] == [
        {"trial": 4, "kind": report["failed_trials"][0]["kind"], "reason": "CUDA out of memory"}
    ]
    assert "timing" not in report

    export_front(studies.load_study(studies.open_storage(url), "f"), tmp_path / "elsewhere" / "f")
    show = ["show", "f", "--storage", url, "--format", "json", "--policies-dir", "elsewhere"]
    again = json.loads(_stdout(capsys, *show, "--timing"))
    assert [p["policy_file_exists"] for p in again["front"]] == [True, True]
    assert again["front"][0]["policy_file"] == "elsewhere/f/trial-0002.yaml"
    assert again["timing"] == []  # no trial of this study was timed


def test_show_table_has_latency_columns_for_a_latency_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _written_study(tmp_path, objective="latency")
    out = _stdout(capsys, "show", "f", "--storage", url)
    assert "latency ratio" in out and "latency ms" in out
    assert "winner at the budget 0.6: trial 1, val acc 0.9700, latency ratio 0.5450" in out
    report = json.loads(_stdout(capsys, "show", "f", "--storage", url, "--format", "json"))
    assert report["front_metric"] == "latency_ratio" and report["budget"] == 0.6
    assert report["front"][-1]["latency_ms"] == pytest.approx(4.95)
    macs_only = _stdout(capsys, "show", "f", "--storage", _written_study(tmp_path / "m"))
    assert "latency" not in macs_only and "MACs ratio" in macs_only


def test_studies_yaml_and_json_list_every_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _written_study(tmp_path)
    rows = yaml.safe_load(_stdout(capsys, "studies", "--storage", url, "--format", "yaml"))
    expected = {
        "name": "f", "budget": 0.5, "objective": "macs", "complete": 4, "failed": 1,
        "running": 0, "front": 2,
    }  # fmt: skip
    assert rows == [expected]
    assert json.loads(_stdout(capsys, "studies", "--storage", url, "--format", "json")) == rows
    table = _stdout(capsys, "studies", "--storage", url)
    assert "f" in table and "macs" in table


def test_inspect_format_json_is_the_old_json_payload(capsys: pytest.CaptureFixture[str]) -> None:
    new = json.loads(_stdout(capsys, "inspect", "--format", "json", "--in-channels", "1"))
    old = json.loads(_stdout(capsys, "inspect", "--json", "--in-channels", "1"))
    assert new == old
    assert set(new) == {"model", "macs", "params", "groups", "excluded"} and new["groups"]
    assert new["excluded"] == {}  # ResNet-20: torch-pruning prunes every group it finds
    assert set(new["groups"][0]) == {"name", "channels", "macs_share", "layers"}
    as_yaml = yaml.safe_load(_stdout(capsys, "inspect", "--format", "yaml", "--in-channels", "1"))
    assert as_yaml == new
    assert "--json" not in _help(capsys, "inspect")  # a hidden alias


def _help(capsys: pytest.CaptureFixture[str], verb: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    return capsys.readouterr().out


@pytest.mark.slow
def test_search_of_the_embedded_default_reads_back_through_every_format(
    trained_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = [
        "search", "--base-checkpoint", str(trained_base), "--space", FAST_SPACE, "--trials", "2",
        "--screen", "1", "--baselines", "none", "--executor", "local", "--storage", url,
        "--study", "t", "--quiet", "--cpus-per-trial", "1",
    ]  # fmt: skip
    assert main(args) == 0
    folder = tmp_path / "policies" / "t"
    assert (folder / "front.png").is_file() and (folder / "front.html").is_file()

    report = json.loads(_stdout(capsys, "show", "t", "--storage", url, "--format", "json"))
    assert report["front"], "a 0.5 budget leaves a feasible front"
    for point in report["front"]:
        assert 0.0 < point["val_accuracy"] <= 1.0 and point["macs_ratio"] <= 0.5
        assert point["policy_file"] == f"policies/t/trial-{point['trial']:04d}.yaml"
        assert point["policy_file_exists"] is True  # search exported the front
        assert Policy.load(point["policy_file"]).measured["macs_ratio"] == pytest.approx(
            point["macs_ratio"], abs=1e-6
        )
    assert report["trials"]["complete"] == 2

    # `autoprune plot` redraws both files; the base model's point comes from the checkpoint.
    (folder / "front.html").unlink()
    assert main(["plot", "t", "--storage", url]) == 0
    html = (folder / "front.html").read_text()
    assert "base model" in html and "feasible Pareto front" in html
    for point in report["front"]:
        assert f"trial {point['trial']} (searched)" in html

    # Optuna's own CLI names the objectives.
    optuna_cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", "t", "--storage", url, "-f", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    complete = [t for t in json.loads(listed) if t["state"] == "COMPLETE"]
    assert complete and all(set(t["values"]) == {"val_accuracy", "macs_ratio"} for t in complete)
