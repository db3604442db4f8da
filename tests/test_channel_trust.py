"""What a trial measured is what a user gets back: the class threshold keeps the MACs target,
and an exported policy replays to exactly the channels its trial removed.

The class threshold's rule (``prune._keep_budget``): the threshold decides which channels are
candidates, the budget how many go; what the threshold spares is taken from the policy's other
pruned groups, and only when they cannot cover it does the budget win.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from autoprune import groups
from autoprune.base import load_base
from autoprune.checkpoint import load_checkpoint
from autoprune.cli import main
from autoprune.evaluate import ObjectiveConfig, evaluate_policy, prune_policy
from autoprune.policy import ClassAware, GroupPolicy, Policy, Retrain, Scoring
from autoprune.prune import removed_digest

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(base: Path, **overrides: object) -> ObjectiveConfig:
    settings: dict = {"calibration_images": 64, "max_rate": 0.85, "device": "cpu"}
    settings.update(overrides)
    return ObjectiveConfig(base_checkpoint=str(base), dataset="mnist5k", **settings)


def _policy(base: Path, criterion_of: dict[str, str] | str, **sections: object) -> Policy:
    spec = load_base(base).spec
    names = [g.name for g in groups.discover_groups(spec.build(), spec.example_inputs())]
    pick = (lambda n: criterion_of) if isinstance(criterion_of, str) else criterion_of.__getitem__
    return Policy(
        model=spec,
        groups={n: GroupPolicy(rate=0.3, criterion=pick(n)) for n in names},
        target_macs_ratio=0.5,
        retrain=Retrain(epochs=0.0),
        **sections,  # type: ignore[arg-type]
    )


def _macs_ratio(pruned: object, base: Path) -> float:
    from autoprune.evaluate import base_macs_params

    return pruned.macs / base_macs_params(load_base(base))[0]  # type: ignore[attr-defined]


def _run_search(
    base: Path, tmp_path: Path, criteria: list[str], threshold_high: float, *extra: str
) -> Path:
    """A local search over a small raw-rate space offering ``criteria``; returns its database."""
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "schema": "autoprune.space/1",
                "granularity": "group",
                "rate": {"low": 0.0, "high": 0.8},
                "max_rate": 0.85,
                "criteria": criteria,
                "criterion_per": "group",
                "target_macs_ratio": {"low": 0.3, "explore": 0.5},
                "retrain": {"epochs": [0.05], "lr": {"low": 0.02, "high": 0.1, "log": True}},
                "iterative_steps": [1],
                "class_threshold": {"low": 1.0, "high": threshold_high},
                "depth": {"max_blocks_per_stage": 0},
            }
        )
    )
    db = tmp_path / "s.db"
    args = [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--space", str(space), "--baselines", "none", "--executor", "local",
        "--storage", f"sqlite:///{db}", "--study", "t", "--quiet", "--calibration-images", "64",
        *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return db


# --------------------------------------------------------------------------- class threshold


def test_the_class_threshold_spares_channels_and_other_groups_keep_the_budget(
    trained_base: Path,
) -> None:
    spec = load_base(trained_base).spec
    names = [g.name for g in groups.discover_groups(spec.build(), spec.example_inputs())]
    mixed = {n: ("class_aware" if i % 2 == 0 else "l1") for i, n in enumerate(names)}
    policy = _policy(trained_base, mixed, class_aware=ClassAware(min_classes=3.0))
    pruned = prune_policy(_config(trained_base), policy)
    assert abs(_macs_ratio(pruned, trained_base) - 0.5) <= 0.01
    assert pruned.counters.get("class_threshold_spared", 0) > 0, "the threshold spared channels"
    assert pruned.counters.get("class_threshold_overridden", 0) == 0
    # No class-aware group lost a channel at or above the threshold: the counts are recomputed
    # here on the base model, as the trial did.
    unlimited = prune_policy(
        _config(trained_base), replace(policy, class_aware=ClassAware(min_classes=None))
    )
    spared = [
        n
        for n in names
        if mixed[n] == "class_aware"
        and pruned.policy.groups[n].rate < unlimited.policy.groups[n].rate
    ]
    assert spared, "some class-aware group kept channels the budget alone would remove"
    # The applied rates say what went, so the policy replays to the same channels.
    again = prune_policy(_config(trained_base), Policy.from_yaml(pruned.policy.to_yaml()))
    assert again.policy.removed_sha256 == pruned.policy.removed_sha256


def test_when_only_thresholded_groups_prune_the_budget_wins(trained_base: Path) -> None:
    # A threshold of 0 makes no channel a candidate, and every pruned group is class-aware:
    # nothing can cover what the threshold spares, so the projected plan goes as it is.
    policy = _policy(trained_base, "class_aware", class_aware=ClassAware(min_classes=0.0))
    pruned = prune_policy(_config(trained_base), policy)
    assert abs(_macs_ratio(pruned, trained_base) - 0.5) <= 0.01
    assert pruned.counters["class_threshold_overridden"] > 0


def test_without_a_target_the_threshold_caps_the_rates(trained_base: Path) -> None:
    policy = replace(
        _policy(trained_base, "class_aware", class_aware=ClassAware(min_classes=0.0)),
        target_macs_ratio=None,
    )
    pruned = prune_policy(_config(trained_base), policy)
    assert all(not idx for *_, idx in pruned.history)


@pytest.mark.slow
def test_a_search_with_a_class_threshold_keeps_every_trial_on_its_target(
    trained_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = _run_search(
        trained_base, tmp_path, ["class_aware", "l1"], 6.0, "--trials", "3", "--screen", "2"
    )
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{db}").get_trials()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 3
    thresholds = 0
    for t in complete:
        policy = Policy.from_dict(t.user_attrs["policy"])
        assert policy.target_macs_ratio is not None
        assert abs(t.values[1] - policy.target_macs_ratio) <= 0.01
        thresholds += policy.class_aware.min_classes is not None
    assert thresholds, "the space's class threshold was sampled"


# --------------------------------------------------------------------------- replay digest


@pytest.mark.parametrize("criterion", ["energy", "class_aware", "relevance", "auto"])
def test_an_exported_policy_replays_to_the_trials_channels_and_macs(
    trained_base: Path, criterion: str
) -> None:
    policy = _policy(trained_base, criterion, class_aware=ClassAware(min_classes=2.0))
    trial = evaluate_policy(_config(trained_base), policy, proxy=False)
    exported = Policy.from_yaml(trial.policy.to_yaml())
    # Everything that decided the channels is in the exported policy...
    assert exported.scoring == Scoring(
        calibration_images=64, calibration_batch_size=64, max_rate=0.85
    )
    assert exported.removed_sha256 is not None and exported.removed_sha256.startswith("sha256:")
    # ...so a run with other settings (replay's defaults) removes the same channels.
    replayed = prune_policy(_config(trained_base, calibration_images=256, max_rate=0.9), exported)
    assert replayed.policy.removed_sha256 == exported.removed_sha256
    assert removed_digest(replayed.history, []) == exported.removed_sha256
    assert _macs_ratio(replayed, trained_base) == pytest.approx(trial.macs_ratio, abs=1e-9)
    if criterion == "auto":
        assert all(g.chosen_from for g in exported.groups.values() if g.rate > 0)


def test_replay_refuses_a_policy_whose_channels_differ_from_its_trial(
    trained_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trial = evaluate_policy(_config(trained_base), _policy(trained_base, "energy"), proxy=False)
    # Scoring on other calibration images picks other channels than the trial measured.
    edited = replace(trial.policy, scoring=replace(trial.policy.scoring, calibration_images=32))
    path = tmp_path / "edited.yaml"
    edited.save(path)
    out = tmp_path / "pruned.pt"
    code = main(["replay", str(path), "--epochs", "0", "--out", str(out), "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "removed other channels than the trial" in err
    assert "removed_sha256" in err  # says how to accept the new channels
    assert not out.exists()


@pytest.mark.slow
def test_exported_front_replays_through_the_cli_to_the_same_channels(
    trained_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = _run_search(
        trained_base,
        tmp_path,
        ["energy", "class_aware", "relevance", "auto"],
        4.0,
        "--trials",
        "2",
        "--screen",
        "1",
    )
    assert main(["export", "t", "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "p")]) == 0
    exported = sorted((tmp_path / "p").glob("trial-*.yaml"))
    assert exported
    for path in exported:
        policy = Policy.load(path)
        out = tmp_path / f"{path.stem}.pt"
        assert main(["replay", str(path), "--epochs", "0", "--out", str(out)]) == 0
        raw = torch.load(out, map_location="cpu", weights_only=True)
        assert removed_digest(raw["pruning_history"], []) == policy.removed_sha256
        assert raw["metrics"]["macs_ratio"] == pytest.approx(policy.measured["macs_ratio"], 1e-6)
        load_checkpoint(out)  # and it loads back
