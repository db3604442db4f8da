"""``autoprune sensitivity``: the sensitivity prior's per-group curves as a table and a PNG,
from the same cache a search fills, and ``show`` pointing at it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from autoprune.cli import main
from autoprune.groups import build_graph, current_groups
from autoprune.modelspec import ModelSpec

SPEC = ModelSpec("resnet20", 10, (1, 28, 28))


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_every_group_is_in_the_table_the_json_and_the_png(
    trained_base: Path, warm_sensitivity: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The verb reads the curves a search of the default space cached (conftest measured them
    once, through the same ``priors.sensitivity_curves`` the verb calls)."""
    monkeypatch.chdir(tmp_path)
    model = SPEC.build()
    groups = list(current_groups(model, build_graph(model, SPEC.example_inputs())))
    png = tmp_path / "s.png"
    assert main(["sensitivity", "--base-checkpoint", str(trained_base), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "sensitivity of resnet20 on mnist5k" in out and f"plot: {png}" in out
    for group in groups:  # every group has its row
        assert any(line.strip("│ ").startswith(group + " ") for line in out.splitlines()), group
    assert matplotlib.image.imread(png).shape[0] > 100

    # The JSON of a second call holds the same groups.
    assert main(["sensitivity", "--base-checkpoint", str(trained_base), "--out", str(png),
                 "--format", "json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert [row["group"] for row in report["groups"]] == groups
    assert report["dataset"] == "mnist5k" and report["rates"] == [0.4, 0.8]
    for row in report["groups"]:
        assert 0.0 < row["macs_share"] < 1.0
        assert set(row["loss_increase"]) == {"0.4", "0.8"}
    # Together the groups' channels hold most of the network's MACs.
    shares = {row["group"]: row["macs_share"] for row in report["groups"]}
    assert sum(shares.values()) > 0.5


def test_a_folder_as_out_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sensitivity", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder: give a .png file name" in err and "Traceback" not in err


def test_show_points_at_the_curves_when_the_study_used_the_sensitivity_prior(
    tmp_path: Path,
) -> None:
    import optuna

    from autoprune import study as studies
    from autoprune.cli.reports import study_report
    from autoprune.config import SearchConfig

    config = SearchConfig(base_checkpoint="/models/base.pt", dataset="fashion-mnist")
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = studies.create_or_load(
        studies.open_storage(url), "s", config, optuna.samplers.RandomSampler(0)
    )
    studies.save_config(study, config)
    assert study_report(study)["sensitivity_command"] is None  # no trial used it yet
    trial = study.ask()
    trial.set_user_attr(studies.BASELINE_ATTR, "sensitivity-l1")
    studies.finish_trial(study, trial, {"val_accuracy": 0.9, "macs_ratio": 0.5}, budget=0.5)
    assert study_report(study)["sensitivity_command"] == (
        "autoprune sensitivity --base-checkpoint /models/base.pt --dataset fashion-mnist"
    )
