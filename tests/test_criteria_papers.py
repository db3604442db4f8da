"""The paper criteria compute what their papers define (DESIGN.md, "Pruning criteria").

* ``energy`` (Yeom et al. 2021): the mean nuclear norm of each channel's post-activation map,
  checked against an independent ``torch.linalg.matrix_norm(..., ord="nuc")``.
* ``class_aware`` (Jiang et al. 2024): a soft count of classes in ``[0, num_classes]``; a
  channel that only ever fires for one class counts about 1.
* ``relevance`` (Aketi et al. 2020): LRP alpha2-beta1 conserves the total relevance from layer
  to layer, residual additions included (through the ``torch.fx`` rewrite into zennit ``Sum``),
  and a dead channel receives none.
* ``auto`` (LAASP, Ghimire et al. 2023): the chosen criterion is written into the applied
  policy, and a criterion whose removal clearly hurts the loss is not chosen.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune import groups, prune
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringContext, ScoringInputs
from autoprune.criteria.relevance import channel_relevance, explainer
from autoprune.criteria.taps import ChannelTaps
from autoprune.data import TensorSplit
from autoprune.errors import UserError
from autoprune.modelspec import ModelSpec
from autoprune.policy import ClassAware, GroupPolicy, LossAware, Policy, Schedule

# Total relevance (1 on the true-class logit) may drift from 1 by this much per image at a
# feature map. Measured over 3 seeds x 16 images: at most 2.9e-3 on the plain chain below and
# 3.9e-3 on ResNet-20's residual stream. The drift comes from the rule's stabiliser (1e-6
# against sums of ~0.05: ~5e-5) and from neurons whose inputs all push one way, where
# alpha-beta hands on alpha (or -beta) times their relevance instead of all of it.
CONSERVATION_TOLERANCE = 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")


bn, relu = nn.BatchNorm2d, nn.ReLU


class Chain(nn.Module):
    """conv-bn-relu x2, max pool, conv-bn-relu, global average pool, linear: no residuals."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(in_channels, 8, 3, padding=1), bn(8), relu()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 12, 3, padding=1), bn(12), relu()
        self.pool = nn.MaxPool2d(2)
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(12, 16, 3, padding=1), bn(16), relu()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        x = self.relu3(self.bn3(self.conv3(self.pool(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers the non-trivial statistics of a trained network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)


def context(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    policy: Policy | None = None,
) -> tuple[ScoringContext, list[groups.GroupView]]:
    spec = ModelSpec("test", num_classes, tuple(images.shape[1:]))  # type: ignore[arg-type]
    graph = groups.build_graph(model, images[:1])
    views = [groups.view_of(n, g, graph) for n, g in groups.current_groups(model, graph).items()]
    calib = Calibration(TensorSplit(images, labels), "test", num_images=len(labels), batch_size=16)
    inputs = ScoringInputs(calibration=calib, num_classes=num_classes)
    policy = policy or Policy(model=spec, groups={})
    return ScoringContext.create(model, graph, policy, inputs), views


def random_data(
    n: int, shape: tuple[int, ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=generator), torch.arange(n) % num_classes


# --------------------------------------------------------------------------- energy


def test_energy_is_the_mean_nuclear_norm_of_post_activation_maps() -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    randomise_batchnorm(model)
    images, labels = random_data(24, (3, 12, 12), 4)

    maps: dict[str, list[torch.Tensor]] = {"relu1": [], "relu2": [], "relu3": []}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: maps[name].append(out.detach().double())
        )
        for name in maps
    ]
    with torch.no_grad():
        for batch in images.split(16):
            model(batch)
    for h in hooks:
        h.remove()
    expected = {
        conv: torch.linalg.matrix_norm(torch.cat(maps[relu]), ord="nuc").mean(0)
        for conv, relu in (("conv1", "relu1"), ("conv2", "relu2"), ("conv3", "relu3"))
    }

    ctx, views = context(model, images, labels, 4)
    scores = ctx.scores("energy", views)
    assert set(scores) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(scores[name].double(), want, rtol=1e-5, atol=1e-6)
    assert ctx.counters["calibration_passes"] == 1  # one pass scores every group


def test_energy_of_a_residual_stream_averages_its_post_addition_maps() -> None:
    torch.manual_seed(0)
    model = ModelSpec("resnet20", 10, (3, 16, 16)).build().eval()
    randomise_batchnorm(model)
    images, labels = random_data(8, (3, 16, 16), 10)
    stream = [model.layer1[i].relu2 for i in range(3)] + [model.relu]  # written by conv1 + conv2s
    maps: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, _i, o: maps.__setitem__(m, o.detach().double()))
        for m in stream
    ]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    per_map = [torch.linalg.matrix_norm(maps[m], ord="nuc").mean(0) for m in stream]
    want = torch.stack(per_map).mean(0)

    ctx, views = context(model, images, labels, 10)
    got = ctx.scores("energy", [v for v in views if v.name == "conv1"])["conv1"]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- class-aware


class OneClassChannels(nn.Module):
    """1x1 conv over one-hot-coded images: channel k fires only for class k, the last for all."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_classes, num_classes + 1, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_classes + 1, num_classes)
        with torch.no_grad():
            self.conv.weight.zero_()
            for k in range(num_classes):
                self.conv.weight[k, k] = 1.0  # sees only its class's input plane
            self.conv.weight[num_classes] = 1.0  # sees every plane
            self.conv.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def one_hot_images(num_classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = 0.05 * torch.randn(len(labels), num_classes, 6, 6, generator=generator)
    images[torch.arange(len(labels)), labels] += 1.0
    return images, labels


def test_class_aware_scores_are_soft_class_counts() -> None:
    torch.manual_seed(0)
    model = ModelSpec("resnet20", 10, (3, 16, 16)).build().eval()
    randomise_batchnorm(model)
    images, labels = random_data(40, (3, 16, 16), 10)
    ctx, views = context(model, images, labels, 10)
    scores = ctx.scores("class_aware", views)
    for name, s in scores.items():
        assert (s >= 0).all() and (s <= 10).all(), name
    assert max(float(s.max()) for s in scores.values()) > 1  # channels matter for many classes


def test_a_channel_firing_for_one_class_counts_one() -> None:
    num_classes = 4
    model = OneClassChannels(num_classes).eval()
    images, labels = one_hot_images(num_classes, per_class=5)
    ctx, views = context(model, images, labels, num_classes)
    counts = ctx.scores("class_aware", views)["conv"]
    torch.testing.assert_close(counts[:num_classes], torch.ones(num_classes), atol=0.05, rtol=0)
    assert counts[num_classes] == pytest.approx(num_classes, abs=0.05)


def test_class_aware_reads_the_convolution_output() -> None:
    # A zero filter counts for no class, although BatchNorm turns its map into relu(beta) > 0,
    # which carries gradient: the paper's code multiplies at the convolution output.
    num_classes = 4
    model = nn.Sequential(
        nn.Conv2d(num_classes, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, num_classes),
    ).eval()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0
        model[1].bias.fill_(0.5)
    images, labels = one_hot_images(num_classes, per_class=3)
    ctx, views = context(model, images, labels, num_classes)
    counts = ctx.scores("class_aware", views)["0"]
    assert counts[2] == 0 and (counts[[0, 1, 3, 4, 5]] > 0).all()


def test_the_class_threshold_removes_the_one_class_channels() -> None:
    num_classes = 4
    model = OneClassChannels(num_classes).eval()
    images, labels = one_hot_images(num_classes, per_class=5)
    policy = Policy(
        model=ModelSpec("test", num_classes, (num_classes, 6, 6)),
        groups={"conv": GroupPolicy(rate=0.8, criterion="class_aware")},
        class_aware=ClassAware(min_classes=2.0),
    )
    calib = Calibration(TensorSplit(images, labels), "test", num_images=len(labels))
    result = prune.apply(
        model,
        policy,
        ScoringInputs(calibration=calib, num_classes=num_classes),
        example_inputs=images[:1],
    )
    assert result.removed["conv"] == list(range(num_classes))  # the all-class channel stays


# --------------------------------------------------------------------------- relevance


def relevance_totals(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, canonize: bool = True
) -> dict[str, torch.Tensor]:
    """Per feature map, the total relevance per image that reaches it."""
    graph = groups.build_graph(model, images[:1])
    views = [groups.view_of(n, g, graph) for n, g in groups.current_groups(model, graph).items()]
    taps = ChannelTaps(model, views, images[:2])
    names = {m: n for n, m in model.named_modules()}
    with explainer(model, taps, images[:2], canonize=canonize) as explain:
        logits, maps = explain(images, labels)
    assert logits.shape[0] == len(labels)
    return {names[taps.taps[t].module]: r.double().flatten(1).sum(1) for t, r in maps.items()}


def test_relevance_is_conserved_through_a_plain_network() -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    randomise_batchnorm(model)
    images, labels = random_data(6, (3, 12, 12), 4)
    totals = relevance_totals(model, images, labels)
    assert set(totals) == {"relu1", "relu2", "relu3"}
    for name, total in totals.items():
        torch.testing.assert_close(
            total, torch.ones_like(total), atol=CONSERVATION_TOLERANCE, rtol=0, msg=name
        )


def test_relevance_is_conserved_through_residual_additions() -> None:
    torch.manual_seed(0)
    model = ModelSpec("resnet20", 10, (3, 16, 16)).build().eval()
    randomise_batchnorm(model)
    images, labels = random_data(4, (3, 16, 16), 10)
    # The residual stream: the stem's ReLU and every block's output ReLU. Inside a block only
    # the share that flows through its convolutions arrives, so those maps hold less.
    stream = ["relu"] + [f"layer{s}.{b}.relu2" for s in (1, 2, 3) for b in range(3)]
    totals = relevance_totals(model, images, labels)
    for name in stream:
        torch.testing.assert_close(
            totals[name],
            torch.ones_like(totals[name]),
            atol=CONSERVATION_TOLERANCE,
            rtol=0,
            msg=name,
        )
    # Without the Sum rewrite, autograd hands the full relevance to both operands of every
    # addition: nine additions double the stem's total nine times.
    plain = relevance_totals(model, images, labels, canonize=False)
    assert plain["relu"].min() > 2**9 * (1 - CONSERVATION_TOLERANCE)


def test_a_dead_channel_gets_no_relevance() -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    randomise_batchnorm(model)
    dead = 5
    with torch.no_grad():
        model.conv2.weight[dead] = 0
        model.conv2.bias[dead] = 0
        model.bn2.weight[dead] = 0
        model.bn2.bias[dead] = 0
    images, labels = random_data(16, (3, 12, 12), 4)
    ctx, views = context(model, images, labels, 4)
    per_class, _, _, taps = channel_relevance(views, ctx)
    (slot,) = taps.slots["conv2"]
    assert (per_class[slot.tap][:, dead] == 0).all()
    assert (per_class[slot.tap].abs().sum(0) > 0).sum() == 11  # every other channel has some

    scores = ctx.scores("relevance", views)
    assert scores["conv2"][dead] == 0
    for name, s in scores.items():  # |.| and L2-normalised per group
        assert (s >= 0).all() and float(s.norm()) == pytest.approx(1.0, abs=1e-5), name


# --------------------------------------------------------------------------- auto (LAASP)


class DecisiveWeakChannel(nn.Module):
    """Four channels; the one with the smallest filter decides the class.

    Channel 0 has a small filter but carries the class (a large classifier weight); channel 1
    duplicates channel 2 and is ignored by the classifier. Norm criteria (l1, l2) remove
    channel 0 and break the network; similarity criteria (fpgm, cos) remove the duplicate,
    which costs nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 0.1  # weak filter on plane 0: the class signal
            self.conv.weight[1, 1] = 1.0  # duplicate of channel 2
            self.conv.weight[2, 1] = 1.0
            self.conv.weight[3, 2] = 1.0
            self.fc.weight.zero_()
            self.fc.weight[:, 0] = torch.tensor([20.0, -20.0])
            self.fc.bias.copy_(torch.tensor([-3.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def decisive_data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 3, 4, 4, generator=generator)
    images[:, 0] = torch.where(labels == 0, 5.0, -5.0).view(n, 1, 1)
    return images, labels


def _prune_decisive(criterion: str) -> tuple[prune.PruneResult, float]:
    model = DecisiveWeakChannel().eval()
    images, labels = decisive_data()
    policy = Policy(
        model=ModelSpec("test", 2, (3, 4, 4)),
        groups={"conv": GroupPolicy(rate=0.25, criterion=criterion)},
    )
    calib = Calibration(TensorSplit(images, labels), "test", num_images=len(labels))
    result = prune.apply(
        model,
        policy,
        ScoringInputs(calibration=calib, num_classes=2),
        example_inputs=images[:1],
    )
    with torch.no_grad():
        loss = float(F.cross_entropy(result.model(images), labels))
    return result, loss


def test_auto_does_not_choose_a_criterion_that_breaks_the_group() -> None:
    by_norm, norm_loss = _prune_decisive("l1")
    assert by_norm.removed["conv"] == [0]
    result, loss = _prune_decisive("auto")
    chosen = result.policy.groups["conv"]
    assert chosen.criterion in {"fpgm", "cos"}
    assert chosen.chosen_from == ["l1", "l2", "fpgm", "cos"]
    assert result.removed["conv"] == [1]  # the ignored duplicate
    assert loss < 0.05 < norm_loss


def test_auto_records_the_choice_of_every_group_in_the_applied_policy() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", 10, (3, 16, 16))
    model = spec.build().eval()
    images, labels = random_data(16, (3, 16, 16), 10)
    graph = groups.build_graph(model, spec.example_inputs())
    names = list(groups.current_groups(model, graph))
    policy = Policy(model=spec, groups={n: GroupPolicy(rate=0.3, criterion="auto") for n in names})
    calib = Calibration(TensorSplit(images, labels), "test", num_images=16)
    result = prune.apply(model, policy, ScoringInputs(calibration=calib, num_classes=10))

    assert all(g.criterion == "auto" for g in policy.groups.values())  # the input is left alone
    assert set(result.policy.groups) == set(names)
    for name, group in result.policy.groups.items():
        assert group.criterion in {"l1", "l2", "fpgm", "cos"}, name
        assert group.chosen_from == ["l1", "l2", "fpgm", "cos"], name
        assert group.rate == policy.groups[name].rate
    # The choice survives the policy's YAML form (what export and replay read).
    assert Policy.from_yaml(result.policy.to_yaml()) == result.policy


def _two_step_auto(
    step_choice: dict[int, str] | None,
    monkeypatch: pytest.MonkeyPatch,
    rates: dict[str, float] | None = None,
    **policy_fields: Any,
) -> Any:
    """ResNet-20 (random weights) with every group ``auto`` at rate 0.5 (or ``rates``) in two
    steps; with ``step_choice``, loss-aware selection is replaced by one that picks that
    criterion per step and records the channel counts it was asked to compare."""
    from autoprune.criteria.loss_aware import LossAwareSelection

    asked: list[tuple[int, dict[str, int]]] = []
    if step_choice is not None:

        def select(self: Any, views: list[Any], ctx: ScoringContext) -> dict[str, str]:
            asked.append((ctx.step, {v.name: ctx.removal_counts[v.name] for v in views}))
            return {v.name: step_choice[ctx.step] for v in views}

        monkeypatch.setattr(LossAwareSelection, "select", select)
    spec = ModelSpec("resnet20", 10, (3, 16, 16))
    images, labels = random_data(16, (3, 16, 16), 10)
    model = _seeded(spec)
    names = list(groups.current_groups(model, groups.build_graph(model, spec.example_inputs())))
    policy = Policy(
        model=spec,
        groups={n: GroupPolicy(rate=(rates or {}).get(n, 0.5), criterion="auto") for n in names},
        schedule=Schedule(iterative_steps=2),
        **policy_fields,
    )
    calib = Calibration(TensorSplit(images, labels), "test", num_images=16)
    result = prune.apply(model, policy, ScoringInputs(calibration=calib, num_classes=10))
    return result, asked, spec, calib


def test_auto_chooses_again_at_every_step_and_the_policy_replays_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, asked, spec, calib = _two_step_auto({0: "l1", 1: "fpgm"}, monkeypatch)
    # Chosen on the base for every group, then again for those step 1 prunes, each time at
    # the size of the step it chooses for.
    assert [step for step, _ in asked] == [0, 1]
    assert set(asked[0][1]) == set(result.policy.groups)
    for step, counts in asked:
        for name, n in counts.items():
            planned = groups.removal_schedule(
                groups.channels_to_remove(0.5, _base_channels(spec, name)), 2
            )
            assert n == planned[step], (step, name)
    for group in result.policy.groups.values():
        assert (group.criterion, group.step_criteria) == ("l1", ["l1", "fpgm"])
        assert group.chosen_from == ["l1", "l2", "fpgm", "cos"]
    # The applied policy, read back from YAML, scores each step as the search did: same channels.
    monkeypatch.undo()
    applied = Policy.from_yaml(result.policy.to_yaml())
    assert applied == result.policy
    again = prune.apply(_seeded(spec), applied, ScoringInputs(calibration=calib, num_classes=10))
    assert again.removed_sha256 == result.removed_sha256
    # and step 1's criterion mattered: l1 at both steps removes other channels
    plain = Policy.from_yaml(result.policy.to_yaml())
    for group in plain.groups.values():
        group.step_criteria = None
    other = prune.apply(_seeded(spec), plain, ScoringInputs(calibration=calib, num_classes=10))
    assert other.removed_sha256 != result.removed_sha256


def test_auto_choosing_the_same_criterion_at_every_step_writes_no_step_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, asked, _spec, _calib = _two_step_auto({0: "fpgm", 1: "fpgm"}, monkeypatch)
    assert len(asked) == 2
    assert all(
        g.step_criteria is None and g.criterion == "fpgm" for g in result.policy.groups.values()
    )


def test_a_group_the_first_step_leaves_alone_is_chosen_for_at_its_first_step_that_prunes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # conv1's group has 16 channels: one to remove in two steps is none, then one
    result, asked, _spec, _calib = _two_step_auto(
        {0: "l1", 1: "fpgm"}, monkeypatch, rates={"conv1": 1 / 16}
    )
    assert "conv1" not in asked[0][1] and asked[1][1]["conv1"] == 1
    conv1 = result.policy.groups["conv1"]
    assert (conv1.criterion, conv1.step_criteria, conv1.rate) == ("fpgm", None, 0.0625)
    assert conv1.chosen_from == ["l1", "l2", "fpgm", "cos"]


def test_the_class_threshold_spares_channels_only_at_the_steps_class_aware_scores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step 0 picks class_aware (its threshold spares channels important for a class, and
    offers them again at step 1), step 1 picks l1: no threshold caps what l1 removes there, so
    every group loses its whole rate, as written."""
    result, _asked, _spec, _calib = _two_step_auto(
        {0: "class_aware", 1: "l1"},
        monkeypatch,
        class_aware=ClassAware(min_classes=0.5, samples_per_class=1),
        loss_aware=LossAware(pool=["l1", "class_aware"]),
    )
    spared = [n for n, g in result.policy.groups.items() if g.steps and g.steps[0] < g.steps[1] - 1]
    assert spared, "the threshold spared channels at step 0 in some group"
    for name, group in result.policy.groups.items():
        assert group.rate == 0.5, name  # the whole rate went
        assert group.step_criteria == ["class_aware", "l1"], name


def _seeded(spec: ModelSpec) -> nn.Module:
    torch.manual_seed(0)
    return spec.build().eval()


def _base_channels(spec: ModelSpec, name: str) -> int:
    model = spec.build()
    found = groups.current_groups(model, groups.build_graph(model, spec.example_inputs()))
    return len(found[name][0].idxs)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"rate": 0.5, "criterion": "l1", "step_criteria": ["l1"]},
            "1 criteria for 2 iterative steps",
        ),
        (
            {"rate": 0.5, "criterion": "l1", "step_criteria": ["l1", "auto"]},
            "scoring criterion names",
        ),
        ({"rate": 0.5, "criterion": "l1", "step_criteria": "fpgm"}, "scoring criterion names"),
    ],
)
def test_a_bad_step_criteria_list_says_what_to_write(entry: dict[str, Any], message: str) -> None:
    raw = {
        "model": {"name": "resnet20", "num_classes": 10, "input_shape": [3, 16, 16]},
        "groups": {"conv1": entry},
        "schedule": {"iterative_steps": 2},
    }
    with pytest.raises(UserError, match=message):
        Policy.from_dict(raw, "p.yaml")


def test_an_unknown_step_criterion_is_refused_where_the_policy_meets_the_registry() -> None:
    from autoprune import criteria

    policy = Policy(
        model=ModelSpec("resnet20", 10, (3, 16, 16)),
        groups={"conv1": GroupPolicy(rate=0.5, criterion="l1", step_criteria=["l1", "l9"])},
        schedule=Schedule(iterative_steps=2),
    )
    with pytest.raises(UserError, match="step_criteria names l9, which are not scoring criteria"):
        criteria.check_policy(policy)

    for group, message in (
        (GroupPolicy(0.5, "auto", step_criteria=["l1", "fpgm"]), "records what auto chose"),
        (GroupPolicy(0.5, "l1", step_criteria=["l1"]), "1 criteria for 2 iterative steps"),
    ):
        built = Policy(model=policy.model, groups={"conv1": group}, schedule=policy.schedule)
        with pytest.raises(UserError, match=message):
            criteria.check_policy(built)
