"""What makes the search pay: baselines as trials, rate priors, the proxy, screening, timing.

Also the Fashion-MNIST loader, on tiny IDX files the tests write themselves.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune import data
from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.policy import GroupPolicy, Policy


def _trials(db: Path, name: str = "q") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()


def _search(base: Path, db: Path, trials: int, *extra: str) -> list[str]:
    return [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--trials", str(trials), "--executor", "local", "--storage", f"sqlite:///{db}",
        "--study", "q", "--quiet", "--cpus-per-trial", "1", *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------- baselines + screening


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_baselines_run_first_once_and_screening_records_every_candidate(
    trained_base: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = workdir / "s.db"
    args = _search(trained_base, db, 4, "--space", FAST_SPACE, "--screen", "3")
    assert main(args) == 0
    trials = _trials(db)
    flagged = [t for t in trials if t.user_attrs.get("autoprune.baseline")]
    # fast_space offers l1, fpgm and taylor: uniform l1 and the data-driven taylor.
    assert [t.user_attrs["autoprune.baseline"] for t in flagged] == ["uniform-l1", "uniform-taylor"]
    assert [t.number for t in flagged] == [0, 1], "baselines are the first trials"
    for t in flagged:
        assert t.state is TrialState.COMPLETE
        policy = Policy.from_dict(t.user_attrs["policy"])
        rates = [g.rate for g in policy.groups.values()]
        assert max(rates) - min(rates) <= 1 / 16 + 1e-9, "uniform, up to one channel of 16"
        assert abs(t.values[1] - 0.5) <= 0.01, "baselines target the budget"

    # Searched brackets at the budget screen 3 candidates and fine-tune one.
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    searched = [t for t in trials if t.state is TrialState.COMPLETE and t not in flagged]
    assert len(searched) == 2
    for t in pruned:
        assert t.values is None
        assert 0.0 <= t.user_attrs["proxy_accuracy"] <= 1.0
        assert set(t.user_attrs["timings"]) >= {"load", "project", "score", "prune", "screen"}
        assert "finetune" not in t.user_attrs["timings"]
    for t in [*flagged, *searched]:  # every fine-tuned trial measured its proxy and its cost
        assert 0.0 <= t.user_attrs["proxy_accuracy"] <= 1.0
        assert t.user_attrs["wall"] >= t.user_attrs["timings"]["finetune"]
        assert t.user_attrs["overhead"] >= 0.0
    brackets: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in [*pruned, *searched]:
        brackets.setdefault(t.user_attrs["bracket"], []).append(t)
    for members in brackets.values():  # one fine-tuned trial per bracket of 3, one target
        assert len(members) == 3
        assert sum(t.state is TrialState.COMPLETE for t in members) == 1
        targets = {Policy.from_dict(t.user_attrs["policy"]).target_macs_ratio for t in members}
        assert len(targets) == 1
    assert len(pruned) == 2 * len(brackets)

    # Resuming does not enqueue the baselines again.
    assert main(_search(trained_base, db, 5, "--space", FAST_SPACE, "--screen", "3")) == 0
    names = [t.user_attrs.get("autoprune.baseline") for t in _trials(db)]
    assert sorted(n for n in names if n) == ["uniform-l1", "uniform-taylor"]

    # `baselines NAME --which all` adds only what the study lacks (uniform fpgm), and runs it.
    capsys.readouterr()
    assert (
        main(["baselines", "q", "--which", "all", "--storage", f"sqlite:///{db}", "--quiet"]) == 0
    )
    names = [t.user_attrs.get("autoprune.baseline") for t in _trials(db)]
    assert sorted(n for n in names if n) == ["uniform-fpgm", "uniform-l1", "uniform-taylor"]
    out = capsys.readouterr().out
    assert "baselines (at the budget" in out and "uniform-fpgm" in out
    assert "Spearman" in out and "winner at the budget 0.5" in out

    assert main(["show", "q", "--storage", f"sqlite:///{db}", "--timing"]) == 0
    out = capsys.readouterr().out
    for phase in ("load", "score", "screen", "finetune", "overhead", "wall"):
        assert phase in out


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_no_baselines_and_no_screening(trained_base: Path, workdir: Path) -> None:
    db = workdir / "s.db"
    args = _search(
        trained_base, db, 2, "--space", FAST_SPACE, "--screen", "1", "--baselines", "none"
    )
    assert main(args) == 0
    trials = _trials(db)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert not any(t.user_attrs.get("autoprune.baseline") for t in trials)


def test_bad_screen_and_baselines_values_exit_2(
    workdir: Path, autoprune_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "--screen", "0"]) == 2
    assert "--screen 0 must be in [1, 64]" in capsys.readouterr().err
    assert not (autoprune_home / "autoprune.db").exists(), "nothing stored"
    with pytest.raises(SystemExit) as info:
        main(["search", "--baselines", "some"])
    assert info.value.code == 2
    assert "invalid choice: 'some'" in capsys.readouterr().err


# --------------------------------------------------------------------------- winner at the budget


def test_winner_is_the_best_point_at_the_budget() -> None:
    from autoprune.modelspec import ModelSpec
    from autoprune.study import FrontPoint, winner

    policy = Policy(model=ModelSpec("resnet20", 10, (1, 28, 28)), groups={})
    front = [
        FrontPoint(1, 0.95, 0.30, 0.3, policy),
        FrontPoint(2, 0.97, 0.42, 0.4, policy),
        FrontPoint(3, 0.96, 0.495, 0.5, policy),
    ]
    assert winner(front, 0.5).number == 3
    assert winner(front).number == 2, "without a budget: the front's best"
    assert winner(front[:2], 0.5).number == 2, "no point at the budget: the front's best"


def test_spearman_matches_a_hand_computed_value() -> None:
    from autoprune.study import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties take their average rank: ranks (0.5, 0.5, 2, 3) vs (0, 1, 2, 3).
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


# --------------------------------------------------------------------------- proxy and priors


def test_adaptive_bn_refreshes_statistics_without_changing_any_weight(trained_base: Path) -> None:
    from autoprune.evaluate import ObjectiveConfig, adaptive_bn, adaptive_bn_proxy, prune_policy

    config = ObjectiveConfig(base_checkpoint=str(trained_base), dataset="mnist5k")
    names = _group_names(trained_base)
    policy = Policy(
        model=_spec(trained_base), groups={n: GroupPolicy(rate=0.5, criterion="l1") for n in names}
    )
    pruned = prune_policy(config, policy)
    before = {k: v.clone() for k, v in pruned.model.state_dict().items()}
    refreshed = adaptive_bn(pruned.model, pruned.splits.calibration, pruned.device, 4, 32)
    after = refreshed.state_dict()
    params = {n for n, _ in refreshed.named_parameters()}
    assert params and all(torch.equal(after[n], before[n]) for n in params)
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert stats and any(not torch.equal(after[k], before[k]) for k in stats)
    # The pruned model itself is untouched: its fine-tune does not depend on screening.
    assert all(torch.equal(v, before[k]) for k, v in pruned.model.state_dict().items())
    proxy = adaptive_bn_proxy(pruned, config)
    assert 0.0 <= proxy.accuracy <= 1.0 and proxy.loss > 0
    assert pruned.timings["screen"] > 0


def test_sensitivity_curves_are_measured_once_per_key(
    trained_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from autoprune import priors
    from autoprune.evaluate import ObjectiveConfig

    calls: list[Policy] = []

    def fake_loss(config: ObjectiveConfig, policy: Policy) -> float:
        calls.append(policy)
        return sum(g.rate for g in policy.groups.values())

    monkeypatch.setattr(priors, "_proxy_loss", fake_loss)
    config = ObjectiveConfig(base_checkpoint=str(trained_base), dataset="mnist5k")
    groups = _group_names(trained_base)
    first = priors.sensitivity_curves(config, cache_dir=tmp_path)
    assert len(calls) == 1 + len(groups) * len(priors.SENSITIVITY_RATES)
    assert set(first) == set(groups)
    assert priors.sensitivity_curves(config, cache_dir=tmp_path) == first
    assert len(calls) == 1 + len(groups) * len(priors.SENSITIVITY_RATES), "read from the cache"
    # Another calibration set is another key: measured again.
    priors.sensitivity_curves(replace(config, calibration_images=128), cache_dir=tmp_path)
    assert len(calls) == 2 * (1 + len(groups) * len(priors.SENSITIVITY_RATES))


def test_sensitivity_allocation_meets_the_budget_sparing_sensitive_groups(
    trained_base: Path,
) -> None:
    from autoprune.base import load_base
    from autoprune.macs import MacsModel
    from autoprune.priors import sensitivity_rates

    base = load_base(trained_base)
    mm = MacsModel(base.build(), base.spec.example_inputs())
    fragile = mm.group_names[0]
    curves = {n: [(0.4, 0.1), (0.8, 0.3)] for n in mm.group_names}
    curves[fragile] = [(0.4, 50.0), (0.8, 100.0)]
    rates = sensitivity_rates(curves, mm, 0.5, 0.85)
    counts = [
        min(c - 1, round(rates[n] * c)) for n, c in zip(mm.group_names, mm.channels, strict=True)
    ]
    assert mm.ratio(counts) <= 0.5
    assert rates[fragile] == 0.0
    assert all(r <= 0.85 for r in rates.values())


def test_global_ranking_meets_the_budget(trained_base: Path) -> None:
    from autoprune.base import load_base
    from autoprune.evaluate import ObjectiveConfig
    from autoprune.macs import MacsModel
    from autoprune.priors import global_rates

    config = ObjectiveConfig(base_checkpoint=str(trained_base), dataset="mnist5k")
    rates = global_rates(config, 0.5, 0.85)
    base = load_base(trained_base)
    mm = MacsModel(base.build(), base.spec.example_inputs())
    counts = [round(rates[n] * c) for n, c in zip(mm.group_names, mm.channels, strict=True)]
    assert 0.49 <= mm.ratio(counts) <= 0.5
    assert len(set(rates.values())) > 1, "a global ranking is not uniform"


def _spec(path: Path):  # type: ignore[no-untyped-def]
    from autoprune.base import load_base

    return load_base(path).spec


def _group_names(path: Path) -> list[str]:
    from autoprune.base import load_base
    from autoprune.groups import discover_groups

    base = load_base(path)
    return [g.name for g in discover_groups(base.build(), base.spec.example_inputs())]


# --------------------------------------------------------------------------- Fashion-MNIST


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def _write_fashion(root: Path, train: int = 200, test: int = 50) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        _write_idx(
            root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        _write_idx(root / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


def test_fashion_mnist_reads_idx_files_written_here(tmp_path: Path) -> None:
    root = _write_fashion(tmp_path / "fm")
    splits = data.create("fashion-mnist", root=root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 50)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    image, label = splits.val[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    assert sorted(torch.bincount(splits.val.labels).tolist()) == [2] * 10, "val is stratified"
    # Uncompressed files (as torchvision's raw folder keeps them) are read too.
    plain = tmp_path / "plain"
    plain.mkdir()
    for gz in root.glob("*.gz"):
        (plain / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    assert len(data.create("fashion-mnist", root=plain).test) == 50


def test_fashion_mnist_missing_or_corrupt_files_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        data.create("fashion-mnist", root=tmp_path / "nowhere")
    root = _write_fashion(tmp_path / "fm")
    labels = root / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-5]))
    with pytest.raises(UserError, match="truncated or corrupt"):
        data.create("fashion-mnist", root=root)
    labels.write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="bad magic number"):
        data.create("fashion-mnist", root=root)


# --------------------------------------------------------------------------- recording edge cases


def _memory_study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def test_a_reported_error_is_stored_as_the_failure_reason() -> None:
    from autoprune import study as studies

    study = _memory_study()
    trial = study.ask()
    report = {
        "error": "target 0.1 unreachable",
        "val_accuracy": float("nan"),
        "macs_ratio": float("nan"),
    }
    assert studies.finish_trial(study, trial, report, 0.5) is TrialState.FAIL
    assert study.get_trials()[0].user_attrs["error"] == "target 0.1 unreachable"


def test_a_crashed_baseline_is_retried_as_that_baseline_once(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from autoprune import study as studies
    from autoprune.baselines import enqueue_baselines
    from autoprune.space import SearchSpace

    space = SearchSpace.from_dict({"criteria": ["l1"], "rate": {"low": 0.0, "high": 0.8}})
    ctx = _tiny_context()
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "minimize"]
    )
    assert enqueue_baselines(study, space, ctx, "default") == ["uniform-l1"]
    trial = study.ask()
    space.sample(trial, ctx)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    trial.set_user_attr(studies.DRIVER_ATTR, f"{socket.gethostname()}:{dead.stdout.strip()}")
    assert studies.recover_stale_trials(study, log=lambda _: None) == 1
    retry = study.get_trials()[-1]
    assert retry.user_attrs[studies.BASELINE_ATTR] == "uniform-l1"
    assert retry.user_attrs[studies.EXPLORE_ATTR] is False
    assert enqueue_baselines(study, space, ctx, "default") == [], "the retry is that baseline"


def test_class_aware_baselines_fix_their_threshold() -> None:
    from autoprune.space import SearchSpace

    space = SearchSpace.from_dict(
        {"criteria": ["l1", "class_aware"], "class_threshold": {"low": 1.0, "high": 5.0}}
    )
    baselines = dict(space.baselines(_tiny_context(), "default"))
    assert baselines["uniform-class_aware"]["min_classes"] == 3.0
    assert "min_classes" not in baselines["uniform-l1"]


def _tiny_context():  # type: ignore[no-untyped-def]
    from autoprune.modelspec import ModelSpec
    from autoprune.space import SpaceContext

    names = ["conv1", "layer1.0.conv1"]
    return SpaceContext(
        spec=ModelSpec("resnet20", 10, (1, 28, 28)),
        budget=0.5,
        group_names=names,
        group_stage={n: "a" for n in names},
    )
