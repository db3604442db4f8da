"""The latency objective and --channel-multiple: what a user shipping to real hardware sees.

Latency figures on this 2-core machine are noisy, so no test asserts a latency value; they
assert what must hold whatever the timer says: every trial carries its latency, the study is
ordered and constrained by it, and channel counts are multiples of N.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune import study as studies
from autoprune.base import load_base
from autoprune.budget import allowed_removal, next_removal, project_to_budget
from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.groups import build_graph, current_groups
from autoprune.latency import Latency, LatencySettings, macs_target_for, measure
from autoprune.macs import count_macs_params
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy
from autoprune.prune import apply


def _search(base: Path, db: Path, *extra: str) -> list[str]:
    return [
        "search", "--base-checkpoint", str(base), "--dataset", "mnist5k", "--space", FAST_SPACE,
        "--trials", "2", "--executor", "local", "--storage", f"sqlite:///{db}", "--study", "t",
        "--quiet", "--cpus-per-trial", "1", "--screen", "2", "--baselines", "none", *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------- measuring


def test_measure_times_both_models_and_leaves_them_as_they_were(trained_base: Path) -> None:
    base = load_base(trained_base)
    model, reference = base.build().train(), base.build()
    latency = measure(
        model,
        reference,
        tuple(base.spec.input_shape),
        torch.device("cpu"),
        LatencySettings(batch_size=2, repeats=3, warmup=1),
    )
    assert latency.ms > 0 and latency.base_ms > 0
    assert latency.ratio == pytest.approx(latency.ms / latency.base_ms)
    assert latency.device.startswith("cpu (")
    assert model.training, "timing works on a copy: a model mid fine-tune stays in train mode"


def test_the_macs_target_interpolates_a_monotone_latency_curve() -> None:
    points = [(0.2, 0.4), (0.5, 0.7), (0.8, 0.9)]
    assert macs_target_for(points, 0.55) == pytest.approx(0.35)
    assert macs_target_for(points, 0.95) == pytest.approx(0.9)  # between 0.8 and the base (1, 1)
    # Timing noise made 0.5 look slower than 0.8: the curve is made monotone, not trusted.
    noisy = [(0.2, 0.4), (0.5, 0.95), (0.8, 0.9)]
    assert macs_target_for(noisy, 0.6) < 0.5
    with pytest.raises(UserError, match="out of reach"):
        macs_target_for(points, 0.3)


# --------------------------------------------------------------------------- the objective


def _params_as_latency(
    model: torch.nn.Module, base_model: torch.nn.Module, *_: object, **__: object
) -> Latency:
    """A deterministic stand-in for the timer: half the parameter share as the latency ratio."""
    params = sum(p.numel() for p in model.parameters())
    return Latency(
        ms=0.5 * params / 1e3,
        base_ms=sum(p.numel() for p in base_model.parameters()) / 1e3,
        device="cpu (fake)",
    )


@pytest.mark.slow
def test_a_latency_search_stores_latency_per_trial_and_orders_its_front_by_it(
    trained_base: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Timings on this shared machine swing by 2x; the plumbing is tested on a deterministic
    # latency (parameters), the timer itself by the test above and `both` below.
    monkeypatch.setattr("autoprune.latency.measure", _params_as_latency)
    monkeypatch.setattr("autoprune.evaluate.measure", _params_as_latency)
    db = workdir / "s.db"
    args = _search(trained_base, db, "--objective", "latency", "--budget-latency", "0.9")
    args[args.index("--trials") + 1] = "1"
    assert main([*args, "--latency-repeats", "5", "--latency-warmup", "1"]) == 0
    # A resume projects onto the stored target: no recalibration, same MACs target.
    target = studies.search_config(optuna.load_study(study_name="t", storage=f"sqlite:///{db}"))
    assert target.macs_target is not None, "the calibrated MACs target is stored for resume"
    assert "latency budget 0.9: uniform prunings timed" in capsys.readouterr().out
    assert main(["resume", "t", "--storage", f"sqlite:///{db}", "--trials", "2", "--quiet"]) == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert study.metric_names == ["val_accuracy", "latency_ratio"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    for t in complete:
        assert t.values[1] == pytest.approx(t.user_attrs["latency_ratio"])
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["base_latency_ms"] > 0
        assert t.user_attrs["latency_device"] == "cpu (fake)"
        constraints = {k: v for k, v in t.system_attrs.items() if "constraint" in k}
        assert list(constraints.values()) == [pytest.approx(t.values[1] - 0.9)]
        assert next(iter(constraints)).endswith("latency_budget")
        assert Policy.from_dict(t.user_attrs["policy"]).measured["latency_ratio"] > 0
    screened = study.get_trials(states=(TrialState.PRUNED,))
    assert screened, "--screen 2 screened candidates out"
    for t in screened:  # timed too: their latency constrains the sampler and places them
        assert t.user_attrs["latency_ratio"] > 0
        assert any(k.endswith("latency_budget") for k in t.system_attrs)
    assert studies.search_config(study).macs_target == target.macs_target
    front = studies.pareto_front(study)
    assert front and all(p.front_metric == "latency_ratio" for p in front)
    assert [p.latency_ratio for p in front] == sorted(p.latency_ratio or 0 for p in front)
    assert studies.study_budget(study) == 0.9
    out = capsys.readouterr().out
    assert "latency budget" not in out, "resume does not recalibrate"
    assert "latency ratio" in out, "the front printed shows the latency ratio"


@pytest.mark.slow
def test_both_objectives_make_a_three_objective_study(trained_base: Path, workdir: Path) -> None:
    db = workdir / "s.db"
    args = _search(trained_base, db, "--objective", "both", "--budget-flops", "0.6")
    assert main([*args, "--latency-repeats", "3", "--latency-warmup", "0"]) == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert study.metric_names == ["val_accuracy", "macs_ratio", "latency_ratio"]
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert len(t.values) == 3 and t.values[1] <= 0.6 + 1e-9
        assert t.values[2] == pytest.approx(t.user_attrs["latency_ratio"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget-latency", "0.5"], "--objective macs does not measure"),
        (["--objective", "latency", "--budget-latency", "1.5"], "outside (0, 1]"),
        (["--objective", "latency", "--latency-repeats", "1"], "must be >= 3"),
        (["--channel-multiple", "0"], "must be in [1, 256]"),
    ],
)
def test_bad_latency_options_exit_2_with_one_line(
    trained_base: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    db = workdir / "s.db"
    assert main([*_search(trained_base, db), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")


def test_a_study_of_another_objective_is_not_resumed_under_this_one(
    trained_base: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = workdir / "s.db"
    optuna.create_study(study_name="t", storage=f"sqlite:///{db}", directions=["maximize"] * 1)
    assert main([*_search(trained_base, db), "--objective", "latency"]) == 2
    assert "directions" in capsys.readouterr().err


def test_config_budgets_name_each_constraint() -> None:
    assert SearchConfig().budgets() == {"macs_ratio": 0.5}
    latency = SearchConfig(objective="latency")
    latency.validate()
    assert latency.budgets() == {"latency_ratio": 0.5}
    assert SearchConfig(objective="both", budget_latency=0.7).budgets() == {
        "macs_ratio": 0.5,
        "latency_ratio": 0.7,
    }


# --------------------------------------------------------------------------- channel multiples


def test_allowed_removals_leave_multiples() -> None:
    for channels in (8, 10, 16, 17, 64):
        for n in range(channels):
            removed = allowed_removal(n, channels, 8)
            assert 0 <= removed <= n
            assert removed == 0 or (channels - removed) % 8 == 0
            nxt = next_removal(removed, channels, 8)
            assert nxt is None or ((channels - nxt) % 8 == 0 and channels - nxt >= 8)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_projection_and_surgery_keep_multiples_of_8_and_the_target(
    trained_base: Path, target: float
) -> None:
    base = load_base(trained_base)
    model = base.build()
    inputs = base.spec.example_inputs()
    names = list(current_groups(model, build_graph(model, inputs)))
    policy = Policy(
        model=base.spec,
        groups={g: GroupPolicy(rate=0.4) for g in names},
        target_macs_ratio=target,
        channel_multiple=8,
    )
    base_macs = count_macs_params(model, inputs)[0]
    projected = project_to_budget(policy, model, inputs, max_rate=0.85)
    pruned = apply(base.build(), projected, example_inputs=inputs).model
    macs = count_macs_params(pruned, inputs)[0]
    assert abs(macs / base_macs - target) <= 0.01
    before = {n: m for n, m in base.build().named_modules() if isinstance(m, torch.nn.Conv2d)}
    changed = 0
    for name, conv in pruned.named_modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.out_channels != before[name].out_channels:
            assert conv.out_channels % 8 == 0, f"{name} keeps {conv.out_channels} channels"
            changed += 1
    assert changed, "the policy pruned some layers"
    assert Policy.from_yaml(projected.to_yaml()).channel_multiple == 8


@pytest.mark.slow
def test_a_search_with_channel_multiple_8_prunes_only_to_multiples_of_8(
    trained_base: Path, workdir: Path
) -> None:
    db = workdir / "s.db"
    assert main([*_search(trained_base, db), "--channel-multiple", "8"]) == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    base = load_base(trained_base)
    for t in complete:
        policy = Policy.from_dict(t.user_attrs["policy"])
        assert policy.channel_multiple == 8
        assert abs(t.values[1] - (policy.target_macs_ratio or 0)) <= 0.01
        # Which channels go does not change any shape: score with the data-free l1.
        shapes_only = replace(
            policy, groups={n: GroupPolicy(rate=g.rate) for n, g in policy.groups.items()}
        )
        pruned = apply(base.build(), shapes_only, example_inputs=base.spec.example_inputs()).model
        before = {n: m for n, m in base.build().named_modules() if isinstance(m, torch.nn.Conv2d)}
        for name, conv in pruned.named_modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.out_channels != before[name].out_channels:
                assert conv.out_channels % 8 == 0, f"trial {t.number}: {name} {conv.out_channels}"


@pytest.mark.slow
def test_onnx_runtime_times_the_exported_model(trained_base: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    base = load_base(trained_base)
    latency = measure(
        base.build(),
        base.build(),
        tuple(base.spec.input_shape),
        torch.device("cpu"),
        LatencySettings(repeats=3, warmup=1, runtime="onnxruntime"),
    )
    assert latency.ms > 0 and latency.base_ms > 0
    assert latency.device.endswith(", onnxruntime")


def test_the_winner_under_a_latency_budget_is_the_best_feasible_point() -> None:
    policy = Policy(model=ModelSpec("resnet20", 10, (1, 28, 28)), groups={})

    def point(number: int, accuracy: float, latency: float) -> studies.FrontPoint:
        return studies.FrontPoint(
            number, accuracy, 0.6, 0.6, policy, latency_ratio=latency, front_metric="latency_ratio"
        )

    # Latency is measured, not projected: no trial lands within 0.01 of the budget, yet the
    # most accurate one under it is the winner at the budget (a MACs front would say "none").
    front = [point(1, 0.95, 0.70), point(2, 0.97, 0.76)]
    assert studies.winner(front, 0.8).number == 2
    assert studies.at_budget(0.76, 0.8, "latency_ratio")
    assert not studies.at_budget(0.76, 0.8, "macs_ratio")


@pytest.mark.parametrize("steps", [1, 2])
def test_a_class_threshold_moves_channels_in_multiples_of_8(trained_base: Path, steps: int) -> None:
    from autoprune.evaluate import ObjectiveConfig, prune_policy
    from autoprune.policy import ClassAware, Retrain, Schedule

    base = load_base(trained_base)
    model = base.build()  # the graph must be of the very model the groups are read from
    names = list(current_groups(model, build_graph(model, base.spec.example_inputs())))
    policy = Policy(
        model=base.spec,
        # One inner group is class-aware: the others can take what its threshold spares.
        groups={
            n: GroupPolicy(rate=0.3, criterion="class_aware" if n == "layer3.1.conv1" else "l1")
            for n in names
        },
        target_macs_ratio=0.5,
        channel_multiple=8,
        class_aware=ClassAware(min_classes=3.0),
        schedule=Schedule(iterative_steps=steps),
        retrain=Retrain(epochs=0.0),
    )
    config = ObjectiveConfig(
        base_checkpoint=str(trained_base), dataset="mnist5k", calibration_images=64, device="cpu"
    )
    pruned = prune_policy(config, policy)  # its own check refuses a model off its target
    if steps == 1:  # the last step's re-allocation (prune._keep_budget) ran
        assert pruned.counters.get("class_threshold_spared", 0) > 0
    before = {n: m for n, m in base.build().named_modules() if isinstance(m, torch.nn.Conv2d)}
    for name, conv in pruned.model.named_modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.out_channels != before[name].out_channels:
            assert conv.out_channels % 8 == 0, f"{name} keeps {conv.out_channels} channels"
