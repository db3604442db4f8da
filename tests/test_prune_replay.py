"""The pruning engine: ``prune.apply``, pruned checkpoints and the trial objective.

What a user relies on: a policy prunes coupled channels together and leaves a runnable model;
the same policy, seed and base checkpoint give the same channels in any process; a saved
checkpoint rebuilds the exact same network in a fresh process; and one trial of the embedded
default keeps its accuracy at half the MACs.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune import criteria, groups, prune
from autoprune.base import load_base, save_base, state_dict_sha256
from autoprune.budget import project_to_budget
from autoprune.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringContext, ScoringInputs
from autoprune.depth import drop_blocks
from autoprune.errors import UserError
from autoprune.evaluate import ObjectiveConfig, evaluate_policy, prune_policy
from autoprune.macs import count_macs_params
from autoprune.modelspec import ModelSpec
from autoprune.policy import Depth, GroupPolicy, Policy, Schedule

RunPython = Callable[..., subprocess.CompletedProcess[str]]

RESNET20_MNIST = ModelSpec("resnet20", 10, (1, 28, 28))
RESNET56_CIFAR = ModelSpec("resnet56", 10, (3, 32, 32))
RESNET18_TV = ModelSpec("tv:resnet18", 10, (3, 32, 32))

DATA_FREE = ["l1", "l2", "fpgm", "cos", "bn_scale", "random"]


def conv(model: nn.Module, name: str) -> nn.Conv2d:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Conv2d)
    return layer


def randomized(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """An untrained model whose BatchNorm layers are not at their init (so ``bn_scale`` and
    the logits have something to tell apart), in eval mode."""
    torch.manual_seed(seed)
    model = spec.build()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def fixed_batch(spec: ModelSpec, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *spec.input_shape, generator=torch.Generator().manual_seed(1234))


def group_names(model: nn.Module, spec: ModelSpec) -> list[str]:
    return list(groups.current_groups(model, groups.build_graph(model, spec.example_inputs())))


def widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def last_json_line(proc: subprocess.CompletedProcess[str]) -> Any:
    """The child's result: its last stdout line (library chatter may precede it)."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- check 2: determinism

DETERMINISM_CHILD = """
import json, sys, torch
from autoprune.evaluate import ObjectiveConfig, base_macs_params, prune_policy
from autoprune.policy import Policy

base, policy_path, cache = sys.argv[1:4]
config = ObjectiveConfig(base_checkpoint=base, dataset="mnist5k", score_cache=cache,
                         calibration_images=32)
pruned = prune_policy(config, Policy.load(policy_path))
batch = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = pruned.model.eval()(batch)
print(json.dumps({
    "history": pruned.history,
    "widths": {n: m.out_channels for n, m in pruned.model.named_modules()
               if isinstance(m, torch.nn.Conv2d)},
    "logits": logits.tolist(),
    "policy": pruned.policy.to_dict(),
    "macs": pruned.macs,
    "macs_ratio": pruned.macs / base_macs_params(pruned.base)[0],
}))
"""


@pytest.fixture(scope="module")
def random_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ResNet-20/MNIST base checkpoint (same role as a trained one, no training)."""
    path = tmp_path_factory.mktemp("base") / "resnet20-random.pt"
    save_base(path, randomized(RESNET20_MNIST), RESNET20_MNIST, {"name": "mnist5k", "seed": 0}, {})
    return path


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_same_policy_seed_and_base_prune_identically_in_fresh_processes(
    random_base: Path, tmp_path: Path, run_python: RunPython
) -> None:
    names = group_names(RESNET20_MNIST.build(), RESNET20_MNIST)
    crits = [*DATA_FREE, "taylor"]
    policy = Policy(
        model=RESNET20_MNIST,
        groups={n: GroupPolicy(0.6, crits[i % len(crits)]) for i, n in enumerate(names)},
        target_macs_ratio=0.5,
        schedule=Schedule(iterative_steps=2),
        seed=3,
    )
    policy.save(tmp_path / "p.yaml")
    policy.seed = 4
    policy.save(tmp_path / "p-seed4.yaml")

    def run(policy_file: str, cache: str) -> Any:
        # A separate score cache per run: the second run must compute, not read, its scores.
        return last_json_line(
            run_python(
                DETERMINISM_CHILD,
                str(random_base),
                str(tmp_path / policy_file),
                str(tmp_path / cache),
            )
        )

    first, second = run("p.yaml", "cache-a"), run("p.yaml", "cache-b")
    assert first["history"] == second["history"]  # the same channel indices, every step
    assert first["widths"] == second["widths"]
    assert first["logits"] == second["logits"]  # bit for bit (JSON floats round-trip exactly)
    assert first["policy"] == second["policy"] and first["macs"] == second["macs"]
    # Every group was pruned in both steps, and the result is on budget.
    assert len(first["history"]) == 2 * len(names)
    assert 0.49 <= first["macs_ratio"] <= 0.5
    # The seed matters (random scores, calibration draw): the comparison above is not vacuous.
    config = ObjectiveConfig(
        base_checkpoint=str(random_base),
        dataset="mnist5k",
        score_cache=str(tmp_path / "cache-c"),
        calibration_images=32,
    )
    other = prune_policy(config, Policy.load(tmp_path / "p-seed4.yaml"))
    assert other.history != first["history"]


# --------------------------------------------------------------------------- check 3: checkpoints

CHECKPOINT_CHILD = """
import json, sys, torch
from torch import nn
from autoprune.macs import count_macs_params
from autoprune.checkpoint import load_checkpoint

batch = torch.load(sys.argv[1], weights_only=True)
out = []
for path in sys.argv[2:]:
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled modules
    loaded = load_checkpoint(path)
    with torch.no_grad():
        logits = loaded.model(batch)
    out.append({
        "format": payload["format"],
        "logits": logits.tolist(),
        "macs": count_macs_params(loaded.model, torch.zeros(1, *batch.shape[1:]))[0],
        "widths": {n: m.out_channels for n, m in loaded.model.named_modules() if isinstance(m, nn.Conv2d)},
        "training": loaded.model.training,
        "policy": loaded.policy.to_dict(),
        "metrics": loaded.metrics,
        "base_sha256": loaded.base_sha256,
    })
print(json.dumps(out))
"""


def prune_resnet56_to_half(
    policy_extra: dict[str, Any],
) -> tuple[nn.Module, prune.PruneResult, nn.Module]:
    """Project random rates of every ResNet-56 group onto a 0.5 MACs ratio and prune."""
    base = randomized(RESNET56_CIFAR, seed=5)
    left = copy.deepcopy(base)
    if "depth" in policy_extra:  # rates are for the groups left after block removal
        drop_blocks(left, policy_extra["depth"].drop_blocks, RESNET56_CIFAR.example_inputs())
    names = group_names(left, RESNET56_CIFAR)
    rates = torch.rand(len(names), generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    raw = Policy(
        model=RESNET56_CIFAR,
        groups={
            n: GroupPolicy(float(r), DATA_FREE[i % len(DATA_FREE)])
            for i, (n, r) in enumerate(zip(names, rates, strict=True))
        },
        target_macs_ratio=0.5,
        seed=11,
        **policy_extra,
    )
    projected = project_to_budget(raw, base)
    model = copy.deepcopy(base)
    return base, prune.apply(model, projected), model


CHECKPOINT_VARIANTS: dict[str, dict[str, Any]] = {
    "one-shot": {},
    "two-steps-and-dropped-blocks": {
        "schedule": Schedule(iterative_steps=2),
        "depth": Depth(drop_blocks=["layer3.8", "layer2.4"]),
    },
}


def test_resnet56_checkpoints_at_half_the_macs_replay_exactly_in_a_fresh_process(
    tmp_path: Path, run_python: RunPython
) -> None:
    batch = fixed_batch(RESNET56_CIFAR, 8)
    torch.save(batch, tmp_path / "batch.pt")
    inputs = RESNET56_CIFAR.example_inputs()
    expected = []
    for variant, policy_extra in CHECKPOINT_VARIANTS.items():
        base, result, pruned = prune_resnet56_to_half(policy_extra)
        base_macs = count_macs_params(base, inputs)[0]
        macs = count_macs_params(pruned, inputs)[0]
        assert 0.49 <= macs / base_macs <= 0.5, variant
        with torch.no_grad():
            logits = pruned(batch)
            assert not torch.equal(logits, base(batch))  # pruning changed the network
        base_sha = state_dict_sha256(base.state_dict())
        path = save_checkpoint(
            tmp_path / "ckpt" / f"{variant}.pt",
            pruned,
            result.history,
            result.policy,
            {"macs": macs, "macs_ratio": macs / base_macs},
            base_sha,
        )
        assert not path.with_suffix(".pt.tmp").exists()  # written atomically
        expected.append((path, logits, macs, widths(pruned), result.policy, base_sha))

    paths = [str(e[0]) for e in expected]
    children = last_json_line(run_python(CHECKPOINT_CHILD, str(tmp_path / "batch.pt"), *paths))
    for child, (path, logits, macs, kept, policy, base_sha) in zip(children, expected, strict=True):
        assert child["format"] == CHECKPOINT_FORMAT
        assert (torch.tensor(child["logits"]) - logits).abs().max().item() == 0.0, path.name
        assert child["logits"] == logits.tolist(), path.name
        assert child["macs"] == macs, path.name
        assert child["widths"] == kept, path.name
        assert child["training"] is False
        assert child["policy"] == policy.to_dict()
        assert child["metrics"]["macs"] == macs and child["base_sha256"] == base_sha
    # Dropped blocks are gone in the replayed model as well.
    assert "layer3.8.conv1" not in children[1]["widths"]
    assert "layer3.8.conv1" in children[0]["widths"]


def test_checkpoint_holds_plain_data_only(tmp_path: Path) -> None:
    model = randomized(RESNET20_MNIST)
    result = prune.apply(model, Policy(model=RESNET20_MNIST, groups={"conv1": GroupPolicy(0.5)}))
    path = save_checkpoint(
        tmp_path / "c.pt", model, result.history, result.policy, {"acc": 1}, None
    )
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {
        "format",
        "model",
        "policy",
        "pruning_history",
        "state_dict",
        "metrics",
        "base_sha256",
        "sha256",
    }

    def leaves(x: Any) -> list[Any]:
        if isinstance(x, dict):
            return [leaf for v in x.values() for leaf in leaves(v)]
        if isinstance(x, (list, tuple)):
            return [leaf for v in x for leaf in leaves(v)]
        return [x]

    assert all(
        isinstance(leaf, (str, int, float, bool, type(None), torch.Tensor))
        for leaf in leaves(payload)
    )
    assert payload["pruning_history"] == [["conv1", True, result.removed["conv1"]]]


def test_damaged_or_foreign_checkpoints_are_user_errors(tmp_path: Path, random_base: Path) -> None:
    model = randomized(RESNET20_MNIST)
    result = prune.apply(
        model, Policy(model=RESNET20_MNIST, groups={"layer1.0.conv1": GroupPolicy(0.5)})
    )
    good = save_checkpoint(tmp_path / "good.pt", model, result.history, result.policy, {}, None)
    assert conv(load_checkpoint(good).model, "layer1.0.conv1").out_channels == 8

    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="not a pruned autoprune checkpoint"):
        load_checkpoint(random_base)  # a base checkpoint is not a pruned one
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="is not a torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")

    payload = torch.load(good, weights_only=True)
    damaged = {**payload, "pruning_history": [["layer9.conv1", True, [0, 1]]]}
    torch.save(damaged, tmp_path / "bad-history.pt")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(tmp_path / "bad-history.pt")
    # Weights from another pruning do not fit the replayed architecture.
    other = {**payload, "pruning_history": [["layer1.0.conv1", True, [0, 1, 2]]]}
    torch.save(other, tmp_path / "bad-weights.pt")
    with pytest.raises(UserError, match="weights do not fit"):
        load_checkpoint(tmp_path / "bad-weights.pt")


# --------------------------------------------------------------------------- check 4: coupled channels


def assert_kept_slices(
    original: nn.Module, pruned: nn.Module, view: groups.GroupView, removed_root: list[int]
) -> None:
    """Every layer of the group lost the same channels: pruned params are the original's kept slices."""
    gone = set(removed_root)
    modules = dict(pruned.named_modules())
    before = dict(original.named_modules())
    for member in view.members:
        layer_removed = {i for i, r in zip(member.idxs, member.root_idxs, strict=True) if r in gone}
        old, new = before[member.name], modules[member.name]
        if isinstance(old, (nn.Conv2d, nn.Linear)):
            dim = 0 if member.is_out else 1
            size = old.weight.shape[dim]
            kept = [i for i in range(size) if i not in layer_removed]
            assert new.weight.shape[dim] == len(kept), member.name
            assert torch.equal(new.weight, old.weight.index_select(dim, torch.tensor(kept))), (
                member.name
            )
        elif isinstance(old, nn.BatchNorm2d):
            kept = [i for i in range(old.num_features) if i not in layer_removed]
            assert new.num_features == len(kept), member.name
            for attr in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(new, attr), getattr(old, attr)[kept]), (
                    member.name,
                    attr,
                )


def forward_backward(model: nn.Module, spec: ModelSpec) -> None:
    model.train()
    x = fixed_batch(spec, 4)
    out = model(x)
    assert out.shape == (4, spec.num_classes)
    F.cross_entropy(out, torch.arange(4) % spec.num_classes).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name


COUPLED_CASES: dict[str, tuple[ModelSpec, str, float, list[tuple[str, str, int]]]] = {
    # The stage-2 residual stream of ResNet-56: 32 channels written by the shortcut conv and
    # every block's conv2, read by every block's conv1 and by stage 3's first block.
    "resnet56-stage2-stream": (
        RESNET56_CIFAR,
        "layer2.0.shortcut.0",
        0.5,
        [
            *[(f"layer2.{i}.conv2", "out_channels", 16) for i in range(9)],
            *[(f"layer2.{i}.bn2", "num_features", 16) for i in range(9)],
            *[(f"layer2.{i}.conv1", "in_channels", 16) for i in range(1, 9)],
            ("layer2.0.shortcut.0", "out_channels", 16),
            ("layer2.0.shortcut.1", "num_features", 16),
            ("layer3.0.conv1", "in_channels", 16),
            ("layer3.0.shortcut.0", "in_channels", 16),
            # Untouched: what stage 2 reads from stage 1, the blocks' inner groups, stage 3.
            ("layer2.0.conv1", "in_channels", 16),
            ("layer2.0.shortcut.0", "in_channels", 16),
            *[(f"layer2.{i}.conv1", "out_channels", 32) for i in range(9)],
            ("layer3.0.conv2", "out_channels", 64),
        ],
    ),
    # torchvision ResNet-18: the stream of layer2 (128 channels) with its downsample branch.
    "tv-resnet18-layer2-stream": (
        RESNET18_TV,
        "layer2.0.downsample.0",
        0.25,
        [
            ("layer2.0.conv2", "out_channels", 96),
            ("layer2.1.conv2", "out_channels", 96),
            ("layer2.0.bn2", "num_features", 96),
            ("layer2.1.bn2", "num_features", 96),
            ("layer2.0.downsample.0", "out_channels", 96),
            ("layer2.0.downsample.1", "num_features", 96),
            ("layer2.1.conv1", "in_channels", 96),
            ("layer3.0.conv1", "in_channels", 96),
            ("layer3.0.downsample.0", "in_channels", 96),
            ("layer2.0.conv1", "out_channels", 128),
            ("layer2.1.conv1", "out_channels", 128),
            ("layer3.0.conv2", "out_channels", 256),
        ],
    ),
    # torchvision ResNet-18: the stem + stage-1 stream (64 channels, identity shortcuts).
    "tv-resnet18-stem-stream": (
        RESNET18_TV,
        "conv1",
        0.5,
        [
            ("conv1", "out_channels", 32),
            ("bn1", "num_features", 32),
            ("layer1.0.conv1", "in_channels", 32),
            ("layer1.0.conv2", "out_channels", 32),
            ("layer1.1.conv2", "out_channels", 32),
            ("layer1.1.bn2", "num_features", 32),
            ("layer1.1.conv1", "in_channels", 32),
            ("layer2.0.conv1", "in_channels", 32),
            ("layer2.0.downsample.0", "in_channels", 32),
            ("layer1.0.conv1", "out_channels", 64),
            ("layer2.0.conv1", "out_channels", 128),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(COUPLED_CASES))
def test_residual_group_is_pruned_as_one_and_the_model_still_trains(case: str) -> None:
    spec, group, rate, expected = COUPLED_CASES[case]
    original = randomized(spec)
    model = copy.deepcopy(original)
    graph = groups.build_graph(original, spec.example_inputs())
    view = groups.view_of(group, groups.current_groups(original, graph)[group], graph)

    result = prune.apply(model, Policy(model=spec, groups={group: GroupPolicy(rate, "l1")}))

    modules = dict(model.named_modules())
    for name, attr, size in expected:
        assert getattr(modules[name], attr) == size, (name, attr)
    removed = result.removed[group]
    assert len(removed) == round(rate * view.channels)
    assert result.history == [[group, True, removed]]
    assert_kept_slices(original, model, view, removed)
    # The network still works end to end, in both directions.
    with torch.no_grad():
        assert model.eval()(fixed_batch(spec)).shape == (4, spec.num_classes)
    forward_backward(model, spec)


# --------------------------------------------------------------------------- criteria through apply


@pytest.fixture(scope="module")
def calibration(mnist5k_splits: Any) -> ScoringInputs:
    cal = Calibration(mnist5k_splits.calibration, "mnist5k", num_images=32, batch_size=32)
    return ScoringInputs(calibration=cal, num_classes=10)


def every_group(model: nn.Module, criterion: str, rate: float = 0.5, **kwargs: Any) -> Policy:
    groups = {n: GroupPolicy(rate, criterion) for n in group_names(model, RESNET20_MNIST)}
    return Policy(model=RESNET20_MNIST, groups=groups, **kwargs)


@pytest.mark.parametrize("criterion", [*DATA_FREE, "taylor"])
def test_criterion_prunes_every_group_deterministically(
    criterion: str, calibration: ScoringInputs
) -> None:
    original = randomized(RESNET20_MNIST)
    scoring = calibration if criterion == "taylor" else None
    policy = every_group(original, criterion)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(original)
        runs.append((model, prune.apply(model, policy, scoring)))
    (model, result), (_, again) = runs
    assert result.history == again.history
    # Half of every group's channels are gone, lowest-scored first.
    graph = groups.build_graph(original, RESNET20_MNIST.example_inputs())
    views = [groups.view_of(n, g, graph) for n, g in groups.current_groups(original, graph).items()]
    ctx = ScoringContext.create(original, graph, policy, scoring)
    scores = criteria.get(criterion).score_all(views, ctx)
    for view in views:
        n = round(0.5 * view.channels)
        assert len(result.removed[view.name]) == n
        expected = sorted(int(i) for i in torch.argsort(scores[view.name], stable=True)[:n])
        assert result.removed[view.name] == expected, view.name
        assert result.policy.groups[view.name].criterion == criterion
    assert widths(model)["layer1.0.conv1"] == 8 and widths(model)["layer3.0.conv1"] == 32
    with torch.no_grad():
        assert model(fixed_batch(RESNET20_MNIST)).shape == (4, 10)
    # Data-free criteria never touch calibration data; taylor makes one pass.
    assert result.counters.get("calibration_passes", 0) == (1 if criterion == "taylor" else 0)


def test_magnitude_criteria_remove_the_weakest_filters() -> None:
    """Checked against the weights directly, not through the criteria module."""
    original = randomized(RESNET20_MNIST)
    layer, bn = conv(original, "layer1.0.conv1"), original.get_submodule("layer1.0.bn1")
    assert isinstance(bn, nn.BatchNorm2d)
    expected_scores = {
        "l1": layer.weight.detach().abs().sum((1, 2, 3)),
        "l2": layer.weight.detach().flatten(1).norm(dim=1),
        "bn_scale": bn.weight.detach().abs(),
    }
    for name, score in expected_scores.items():
        model = copy.deepcopy(original)
        result = prune.apply(
            model, Policy(model=RESNET20_MNIST, groups={"layer1.0.conv1": GroupPolicy(0.25, name)})
        )
        assert result.removed["layer1.0.conv1"] == sorted(score.argsort()[:4].tolist()), name


def test_random_criterion_is_seeded() -> None:
    original = randomized(RESNET20_MNIST)
    removed: dict[int, list[dict[str, list[int]]]] = {}
    for seed in (0, 0, 1):
        model = copy.deepcopy(original)
        result = prune.apply(model, every_group(model, "random", seed=seed))
        removed.setdefault(seed, []).append(result.removed)
    assert removed[0][0] == removed[0][1]
    assert removed[0][0] != removed[1][0]


def test_taylor_without_calibration_data_says_what_is_missing() -> None:
    model = randomized(RESNET20_MNIST)
    with pytest.raises(UserError, match="calibration data"):
        prune.apply(model, every_group(model, "taylor"))


# --------------------------------------------------------------------------- iterative steps


def test_iterative_steps_rescore_between_steps_and_are_deterministic() -> None:
    original = randomized(RESNET20_MNIST)
    rates = {
        "conv1": 0.5,
        "layer1.0.conv1": 0.75,
        "layer2.0.shortcut.0": 0.5,
        "layer3.1.conv1": 0.5,
    }
    calls: list[int] = []

    def reverse_layer1_order(model: nn.Module, step: int) -> None:
        """Stand-in for a fine-tune: make the lowest-indexed filters of layer1.0.conv1 the weakest."""
        calls.append(step)
        layer = conv(model, "layer1.0.conv1")
        with torch.no_grad():
            for i in range(layer.out_channels):
                layer.weight[i].fill_(0.01 * (i + 1))

    policy = Policy(
        model=RESNET20_MNIST,
        groups={n: GroupPolicy(r, "l1") for n, r in rates.items()},
        schedule=Schedule(iterative_steps=3),
    )
    histories = []
    for _ in range(2):
        model = copy.deepcopy(original)
        result = prune.apply(model, policy, between_steps=reverse_layer1_order)
        histories.append(result.history)
    assert histories[0] == histories[1]
    assert calls == [0, 1, 0, 1]  # after every step but the last
    # 3 steps x 4 groups, each removing its share of the total.
    assert len(result.history) == 12
    per_group: dict[str, list[list[int]]] = {}
    for name, is_out, idxs in result.history:
        assert is_out is True
        per_group.setdefault(name, []).append(idxs)
    assert {n: [len(i) for i in v] for n, v in per_group.items()} == {
        "conv1": [3, 2, 3],
        "layer1.0.conv1": [4, 4, 4],
        "layer2.0.shortcut.0": [5, 6, 5],
        "layer3.1.conv1": [11, 10, 11],
    }
    # Steps 2 and 3 scored the weights as they were after the callback (indices are positions
    # in the already-pruned layer): the lowest-indexed filters went.
    assert per_group["layer1.0.conv1"][1:] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    # The same final widths as pruning in one step.
    one_shot = copy.deepcopy(original)
    prune.apply(one_shot, Policy(model=RESNET20_MNIST, groups=policy.groups))
    assert widths(model) == widths(one_shot)
    assert widths(model)["layer1.0.conv1"] == 4 and widths(model)["conv1"] == 8


def test_iterative_data_driven_scores_are_recomputed_each_step(
    calibration: ScoringInputs,
) -> None:
    model = randomized(RESNET20_MNIST)
    policy = every_group(model, "taylor", schedule=Schedule(iterative_steps=2))
    result = prune.apply(model, policy, calibration)
    assert result.counters["calibration_passes"] == 2
    assert len(result.history) == 2 * len(policy.groups)
    with torch.no_grad():
        assert model(fixed_batch(RESNET20_MNIST)).shape == (4, 10)


@pytest.mark.parametrize(("total", "steps"), [(0, 3), (1, 3), (7, 2), (10, 3), (63, 5)])
def test_removal_schedule_adds_up(total: int, steps: int) -> None:
    schedule = groups.removal_schedule(total, steps)
    assert len(schedule) == steps and sum(schedule) == total
    assert max(schedule) - min(schedule) <= 1


def test_a_group_always_keeps_a_channel() -> None:
    assert groups.channels_to_remove(0.999, 16) == 15
    assert groups.channels_to_remove(0.0, 16) == 0
    model = randomized(RESNET20_MNIST)
    prune.apply(model, Policy(model=RESNET20_MNIST, groups={"layer1.0.conv1": GroupPolicy(0.99)}))
    assert conv(model, "layer1.0.conv1").out_channels == 1
    with torch.no_grad():
        assert model(fixed_batch(RESNET20_MNIST)).shape == (4, 10)


# --------------------------------------------------------------------------- check 6: inspect


def test_inspect_lists_the_30_groups_of_resnet56(capsys: pytest.CaptureFixture[str]) -> None:
    from autoprune.cli import main

    assert main(["inspect", "--model", "resnet56"]) == 0
    out = capsys.readouterr().out
    assert "30 prunable groups" in out
    for name in (
        "conv1",
        "layer1.0.conv1",
        "layer2.0.shortcut.0",
        "layer3.0.shortcut.0",
        "layer3.8.conv1",
    ):
        assert f" {name} " in out, name


@pytest.mark.slow  # fresh interpreter: make test runs it
def test_inspect_json_is_machine_readable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", "inspect", "--model", "resnet56", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=True,
    )
    payload = json.loads(proc.stdout)  # stdout is pure JSON
    groups = payload["groups"]
    assert len(groups) == 30 and len({g["name"] for g in groups}) == 30
    by_name = {g["name"]: g for g in groups}
    assert by_name["layer3.0.shortcut.0"]["channels"] == 64
    assert by_name["layer1.4.conv1"]["channels"] == 16
    assert by_name["layer1.4.conv1"]["layers"] == ["layer1.4.conv1", "layer1.4.conv2"]
    assert all(0 < g["macs_share"] <= 1 for g in groups)
    assert payload["model"] == RESNET56_CIFAR.to_dict()


# --------------------------------------------------------------------------- check 5: one trial


@pytest.mark.slow
def test_one_trial_of_the_embedded_default_keeps_accuracy_at_half_the_macs(
    trained_base: Path,
) -> None:
    base = load_base(trained_base)
    names = group_names(base.build(), base.spec)
    policy = Policy(
        model=base.spec,
        groups={n: GroupPolicy(0.5, "l1") for n in names},
        target_macs_ratio=0.5,
    )
    assert policy.retrain.epochs == 1.0
    config = ObjectiveConfig(base_checkpoint=str(trained_base), dataset="mnist5k", device="cpu")
    metrics = evaluate_policy(config, policy)
    assert metrics.val_accuracy >= 0.9
    assert abs(metrics.macs_ratio - 0.5) <= 0.01 and metrics.macs_ratio <= 0.5
    assert metrics.params_ratio < 1.0
    applied = metrics.policy
    assert applied.base.sha256 == base.sha256
    assert applied.measured["macs_ratio"] == pytest.approx(metrics.macs_ratio, abs=1e-6)
    assert applied.measured["val_accuracy"] == pytest.approx(metrics.val_accuracy, abs=1e-6)
    # The applied (projected) policy is what an export stores: it round-trips and reproduces the MACs.
    assert Policy.from_yaml(applied.to_yaml()) == applied
    model = base.build()
    prune.apply(model, applied)
    assert count_macs_params(model, base.spec.example_inputs())[0] == metrics.macs
