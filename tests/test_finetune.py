"""A pruned model's fine-tune: BatchNorm statistics re-estimated around it, distillation from the base."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from autoprune import groups
from autoprune.base import save_base
from autoprune.checkpoint import load_checkpoint, replay
from autoprune.errors import UserError
from autoprune.evaluate import ObjectiveConfig, evaluate_policy, prune_policy, torch_threads
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy
from autoprune.train import (
    Distill,
    Retrain,
    TrainConfig,
    distillation_loss,
    finetune_pruned,
    fit,
    recalibrate_batchnorm,
)

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- the loss


def test_distillation_at_alpha_0_is_the_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, teacher = torch.randn(16, 10), torch.randn(16, 10)
    labels = torch.randint(0, 10, (16,))
    off = distillation_loss(logits, labels, teacher, Distill(alpha=0.0, temperature=3.0))
    assert torch.equal(off, F.cross_entropy(logits, labels))


def test_distillation_matches_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    a, t = 0.3, 2.0
    expected_ce = 0.0
    expected_kl = 0.0
    for s_row, t_row, y in zip(logits.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        z = sum(math.exp(v) for v in s_row)
        expected_ce += -math.log(math.exp(s_row[y]) / z) / 2
        ps = [math.exp(v / t) for v in s_row]
        pt = [math.exp(v / t) for v in t_row]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        expected_kl += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True)) / 2
    expected = (1 - a) * expected_ce + a * t * t * expected_kl
    got = distillation_loss(logits, labels, teacher, Distill(alpha=a, temperature=t))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_a_student_that_copies_its_teacher_pays_only_the_hard_term() -> None:
    logits = torch.tensor([[3.0, -1.0, 0.5]])
    labels = torch.tensor([1])
    got = distillation_loss(logits, labels, logits.clone(), Distill(alpha=0.5, temperature=4.0))
    assert got.item() == pytest.approx(0.5 * F.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("alpha", "temperature", "problem"),
    [(-0.1, 4.0, "alpha"), (1.5, 4.0, "alpha"), (0.5, 0.0, "temperature")],
)
def test_bad_distill_settings_are_user_errors(
    alpha: float, temperature: float, problem: str
) -> None:
    with pytest.raises(UserError, match=rf"retrain\.distill\.{problem}"):
        Retrain(distill=Distill(alpha=alpha, temperature=temperature)).validate()


def test_fit_refuses_to_distil_without_a_teacher() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = TensorDataset(torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,)))
    config = TrainConfig(Retrain(epochs=1.0, distill=Distill(alpha=0.5)), batch_size=4)
    with pytest.raises(ValueError, match="teacher"):
        fit(model, data, config, CPU)


def test_the_teacher_moves_the_student_towards_itself_and_is_never_changed() -> None:
    torch.manual_seed(0)
    images = torch.randn(64, 1, 4, 4)
    labels = torch.randint(0, 3, (64,))
    data = TensorDataset(images, labels)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    frozen = copy.deepcopy(teacher.state_dict())
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    start = copy.deepcopy(student)

    def gap(model: nn.Module) -> float:
        with torch.no_grad():
            return F.kl_div(
                F.log_softmax(model(images), 1), F.log_softmax(teacher(images), 1),
                reduction="batchmean", log_target=True,
            ).item()  # fmt: skip

    recipe = Retrain(epochs=5.0, lr=0.05, schedule="constant", distill=Distill(alpha=1.0))
    fit(student, data, TrainConfig(recipe, batch_size=16, weight_decay=0.0), CPU, teacher=teacher)
    assert gap(student) < 0.5 * gap(start)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())


# --------------------------------------------------------------------------- the policy field


def test_distill_round_trips_in_a_policy_and_is_absent_when_off() -> None:
    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    on = Policy(model=spec, groups={}, retrain=Retrain(distill=Distill(alpha=0.4, temperature=2.0)))
    raw = on.to_dict()
    assert raw["retrain"]["distill"] == {"alpha": 0.4, "temperature": 2.0}
    assert Policy.from_yaml(on.to_yaml()) == on
    off = Policy(model=spec, groups={})
    assert "distill" not in off.to_dict()["retrain"]
    assert Policy.from_dict(off.to_dict()).retrain.distill == Distill()


def test_a_bad_distill_field_names_the_file_and_the_fix() -> None:
    raw = Policy(model=ModelSpec("resnet20", 10, (1, 28, 28)), groups={}).to_dict()
    raw["retrain"]["distill"] = {"alpha": 2.0}
    with pytest.raises(
        UserError, match=r"p\.yaml: retrain\.distill\.alpha = 2\.0 must be in \[0, 1\]"
    ):
        Policy.from_dict(raw, source="p.yaml")
    raw["retrain"]["distill"] = {"alpha": 0.5, "temp": 2.0}
    with pytest.raises(UserError, match="temp"):
        Policy.from_dict(raw, source="p.yaml")


def test_a_space_distils_every_candidate_and_baseline(tmp_path: Path) -> None:
    from autoprune.space import SearchSpace

    path = tmp_path / "s.yaml"
    path.write_text(
        "schema: autoprune.space/1\ncriteria: [l1]\n"
        "retrain: {epochs: [0.1], distill: {alpha: 0.25, temperature: 3}}\n"
    )
    assert SearchSpace.load(str(path)).distill == Distill(alpha=0.25, temperature=3.0)
    path.write_text("schema: autoprune.space/1\nretrain: {distill: {alpha: 1.5}}\n")
    with pytest.raises(UserError, match=r"retrain\.distill\.alpha"):
        SearchSpace.load(str(path))


# --------------------------------------------------------------------------- BatchNorm around it


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


def test_a_short_fine_tune_ends_with_the_statistics_of_its_final_weights() -> None:
    """Stale statistics (a pruned network keeps its base's) survive a few steps of ``fit``'s
    running average; ``finetune_pruned`` ends with a fresh estimate of the final weights'."""
    torch.manual_seed(0)
    data = TensorDataset(3.0 + 2.0 * torch.randn(256, 1, 6, 6), torch.randint(0, 3, (256,)))
    config = TrainConfig(Retrain(epochs=3 / 16, lr=0.01), batch_size=16)  # 3 steps

    def stale() -> nn.Module:
        torch.manual_seed(1)
        model = _bn_net()
        bn = model[1]
        bn.running_mean.fill_(-50.0)
        bn.running_var.fill_(1e-3)
        return model

    plain = fit(stale(), data, config, CPU)
    tuned = finetune_pruned(stale(), data, data, config, CPU, bn_batches=4)
    fresh = copy.deepcopy(tuned)
    recalibrate_batchnorm(fresh, data, CPU, num_batches=4, batch_size=128)
    assert plain[1].running_mean.min() < -20  # the plain loop still carries the stale mean
    assert torch.allclose(tuned[1].running_mean, fresh[1].running_mean)
    assert torch.allclose(tuned[1].running_var, fresh[1].running_var)
    assert tuned[1].running_mean.min() > -20


class _FrozenStatistics(nn.Module):
    """A network whose BatchNorm stays in eval mode in training: it normalises with its running
    statistics (as detection models freeze theirs), so they reach the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _bn_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> _FrozenStatistics:
        super().train(mode)
        self.net[1].eval()
        return self


@pytest.mark.parametrize("make", [_bn_net, _FrozenStatistics], ids=["batch-stats", "frozen-bn"])
def test_the_fine_tune_equals_estimating_the_statistics_before_and_after_it(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bit for bit what the recipe with an estimate before the first step gives, with that
    estimate made only where training reads the running statistics (a frozen BatchNorm)."""
    from autoprune import train

    torch.manual_seed(0)
    data = TensorDataset(3.0 + 2.0 * torch.randn(256, 1, 6, 6), torch.randint(0, 3, (256,)))
    config = TrainConfig(Retrain(epochs=5 / 16, lr=0.05), batch_size=16)

    def stale() -> nn.Module:
        torch.manual_seed(1)
        model = make()
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        bn.running_mean.fill_(-50.0)
        bn.running_var.fill_(1e-3)
        return model

    before_and_after = stale()
    recalibrate_batchnorm(before_and_after, data, CPU, num_batches=4)
    fit(before_and_after, data, config, CPU, seed=3)
    recalibrate_batchnorm(before_and_after, data, CPU, num_batches=4)

    estimates: list[int] = []
    real = train.recalibrate_batchnorm

    def counted(*args: Any, **kwargs: Any) -> None:
        estimates.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(train, "recalibrate_batchnorm", counted)
    tuned = finetune_pruned(stale(), data, data, config, CPU, seed=3, bn_batches=4)
    assert len(estimates) == (2 if make is _FrozenStatistics else 1)
    expected = before_and_after.state_dict()
    for name, value in tuned.state_dict().items():
        assert torch.equal(value, expected[name]), name


# --------------------------------------------------------------------------- replay


@pytest.fixture(scope="module")
def random_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "resnet20-random.pt"
    save_base(path, spec.build(), spec, {"name": "mnist5k", "seed": 0}, {})
    return path


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_replay_reproduces_a_distilled_recipe(
    random_base: Path, tmp_path: Path, one_thread: None
) -> None:
    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    model = spec.build()
    names = list(groups.current_groups(model, groups.build_graph(model, spec.example_inputs())))

    def run(distill: Distill, out: str) -> tuple[Policy, dict[str, torch.Tensor]]:
        policy = Policy(
            model=spec, groups={n: GroupPolicy(0.5, "l1") for n in names},
            retrain=Retrain(epochs=0.03, lr=0.02, distill=distill),
        )  # fmt: skip
        result = replay(
            policy, base_checkpoint=str(random_base), epochs=0.03, out=tmp_path / out,
            device="cpu", log=lambda _: None,
        )  # fmt: skip
        return result.policy, load_checkpoint(tmp_path / out).model.state_dict()

    on = Distill(alpha=0.7, temperature=2.0)
    first, weights = run(on, "a.pt")
    _, same = run(on, "b.pt")
    _, plain = run(Distill(), "c.pt")
    assert first.retrain.distill == on
    assert Policy.from_dict(first.to_dict()).retrain.distill == on
    assert all(torch.equal(v, same[k]) for k, v in weights.items())
    assert any(not torch.equal(v, plain[k]) for k, v in weights.items())


# --------------------------------------------------------------------------- threads


def test_a_thread_setting_holds_for_its_block_only() -> None:
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("a failing trial")
    assert torch.get_num_threads() == before


@pytest.mark.slow  # prunes and fine-tunes a ResNet-20
def test_a_trial_or_replay_on_one_thread_leaves_the_callers_threads_alone(
    random_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's thread setting once outlived it in the caller's process: a later replay there
    ran on that one thread, slower and with other rounding."""
    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    model = spec.build()
    names = list(groups.current_groups(model, groups.build_graph(model, spec.example_inputs())))
    policy = Policy(
        model=spec, groups={n: GroupPolicy(0.5, "l1") for n in names},
        retrain=Retrain(epochs=0.01, lr=0.02),
    )  # fmt: skip
    config = ObjectiveConfig(str(random_base), dataset="mnist5k", device="cpu", threads=1)
    import autoprune.checkpoint
    import autoprune.evaluate

    seen: list[int] = []  # threads each fine-tune ran on

    def finetune(*args: Any, original: Any = autoprune.evaluate.finetune) -> Any:
        seen.append(torch.get_num_threads())
        return original(*args)

    monkeypatch.setattr(autoprune.evaluate, "finetune", finetune)
    monkeypatch.setattr(autoprune.checkpoint, "finetune", finetune)
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        prune_policy(config, policy)
        assert torch.get_num_threads() == 2
        evaluate_policy(config, policy)
        assert torch.get_num_threads() == 2
        replay(
            policy, base_checkpoint=str(random_base), epochs=0.01, out=tmp_path / "p.pt",
            threads=1, export_program_file=False, log=lambda _: None,
        )  # fmt: skip
        assert torch.get_num_threads() == 2
        assert seen == [1, 1], "the trial and the replay fine-tuned on their one thread"
    finally:
        torch.set_num_threads(original)


def test_the_sensitivity_pass_runs_on_the_processs_threads_not_the_trials(
    random_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass runs in the driver before any trial, with the machine to itself: a one-thread
    trial setting would leave the other cores idle (36 s instead of 20 s on 2 cores)."""
    import autoprune.priors as priors

    seen: list[tuple[int | None, int]] = []  # (threads asked of the pruning, threads running)

    def prune(config: ObjectiveConfig, policy: Policy) -> Any:
        seen.append((config.threads, torch.get_num_threads()))
        return None

    monkeypatch.setattr(priors, "prune_policy", prune)
    monkeypatch.setattr(
        priors, "adaptive_bn_proxy", lambda pruned, config: SimpleNamespace(loss=1.0)
    )
    config = ObjectiveConfig(str(random_base), dataset="mnist5k", device="cpu", threads=1)
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        curves = priors.sensitivity_curves(config, cache_dir=tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)
    assert len(seen) == 1 + sum(len(rows) for rows in curves.values())  # the unpruned one too
    assert set(seen) == {(None, 2)}, "every proxy on the process's threads"
