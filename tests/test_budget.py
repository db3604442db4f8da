"""Budget projection: a policy's measured MACs ratio lands on its target, or the user is told why not.

The measured ratio is what a user sees in the search results: the policy is applied to a copy
of the model with torch-pruning and the pruned model is counted with
``tp.utils.count_ops_and_params``, independently of the analytic model the projection uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from helpers import by_size
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from autoprune import prune
from autoprune.budget import (
    DEFAULT_TOLERANCE,
    SAFETY_MARGIN,
    project_to_budget,
    removed_counts,
)
from autoprune.errors import UserError
from autoprune.macs import MacsModel, count_macs_params
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy


@dataclass
class Arch:
    spec: ModelSpec
    model: nn.Module  # unpruned; never modified (tests prune deep copies)
    macs_model: MacsModel
    base_macs: int


@cache
def arch(name: str) -> Arch:
    """One traced model per architecture for the whole module (tracing is the slow part)."""
    torch.manual_seed(0)
    spec = ModelSpec(name, 10, (3, 32, 32))
    model = spec.build().eval()
    inputs = spec.example_inputs()
    return Arch(spec, model, MacsModel(model, inputs), count_macs_params(model, inputs)[0])


def policy_for(a: Arch, rates: dict[str, float], target: float | None) -> Policy:
    return Policy(
        model=a.spec,
        groups={name: GroupPolicy(rate=rate) for name, rate in rates.items()},
        target_macs_ratio=target,
    )


def measured_ratio(a: Arch, policy: Policy) -> float:
    """Prune a copy of the model with the policy and count its MACs relative to the base."""
    pruned = copy.deepcopy(a.model)
    prune.apply(pruned, policy)
    return count_macs_params(pruned, a.spec.example_inputs())[0] / a.base_macs


def kept_channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


# --------------------------------------------------------------------------- the property


@st.composite
def raw_policies(draw: st.DrawFn, name: str) -> tuple[dict[str, float], float]:
    """Rates as a sampler proposes them: any value in [0, 0.95], up to a third of groups at 0."""
    groups = arch(name).macs_model.group_names
    rates = draw(st.lists(st.floats(0.0, 0.95), min_size=len(groups), max_size=len(groups)))
    for i in draw(st.sets(st.integers(0, len(groups) - 1), max_size=len(groups) // 3)):
        rates[i] = 0.0
    target = draw(st.floats(0.25, 0.9))
    return dict(zip(groups, rates, strict=True)), target


# Examples per architecture: each one prunes and counts a real model (0.1 s for ResNet-20, up to
# 1 s for VGG-16 on this 2-core machine), so the larger models get fewer.
EXAMPLES = {"resnet20": 25, "resnet56": 15, "vgg16_bn": 15}


@pytest.mark.parametrize("name", by_size(sorted(EXAMPLES)))
def test_projection_lands_on_target_or_says_why(name: str) -> None:
    @settings(
        max_examples=EXAMPLES[name], deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(raw=raw_policies(name))
    def check(raw: tuple[dict[str, float], float]) -> None:
        outcomes.append(check_projection(name, *raw))

    outcomes: list[str] = []
    check()
    # Most sampled policies must be usable, or a search would waste its trials.
    assert outcomes.count("projected") >= len(outcomes) / 2, outcomes


def check_projection(name: str, rates: dict[str, float], target: float) -> str:
    a = arch(name)
    raw = policy_for(a, rates, target)
    try:
        projected = project_to_budget(raw, a.model, macs_model=a.macs_model)
    except UserError as exc:
        message = str(exc)
        if not any(rates.values()):
            assert "every group rate is 0" in message
            return "rejected"
        assert "unreachable" in message
        assert f"{target:.3f}" in message  # names the user's target, not an internal one
        pruned_groups = [i for i, g in enumerate(a.macs_model.group_names) if rates[g] > 0]
        caps = [
            min(c - 1, int(0.9 * c + 1e-9)) if i in pruned_groups else 0
            for i, c in enumerate(a.macs_model.channels)
        ]
        if "within" not in message:
            # Even with every pruned group at its cap the MACs stay above the target.
            assert a.macs_model.ratio(caps) > target - 2 * SAFETY_MARGIN
        elif len(pruned_groups) == 1:
            # Too coarse: no channel count of the one pruned group lands in the window.
            (i,) = pruned_groups
            for n in range(caps[i] + 1):
                removed = [n if j == i else 0 for j in range(len(caps))]
                assert not target - DEFAULT_TOLERANCE <= a.macs_model.ratio(removed) <= target
        return "rejected"
    ratio = measured_ratio(a, projected)
    assert ratio <= target, f"measured MACs ratio {ratio:.4f} is over the target {target:.4f}"
    assert target - ratio <= DEFAULT_TOLERANCE, f"{ratio:.4f} is too far under {target:.4f}"
    for group, gp in projected.groups.items():
        assert gp.rate <= 0.9 + 1e-9  # the default cap
        if rates.get(group, 0.0) == 0.0:
            assert gp.rate == 0.0, f"group {group} had rate 0 but the projection pruned it"
    assert projected.target_macs_ratio == target
    return "projected"


# --------------------------------------------------------------------------- examples


def test_projection_keeps_criteria_and_other_sections() -> None:
    a = arch("resnet20")
    rates = {g: 0.5 for g in a.macs_model.group_names}
    raw = policy_for(a, rates, 0.6)
    raw.groups["conv1"] = GroupPolicy(rate=0.5, criterion="fpgm")
    raw.seed = 7
    projected = project_to_budget(raw, a.model)  # no prebuilt MacsModel: traces itself
    assert projected.groups["conv1"].criterion == "fpgm"
    assert projected.seed == 7 and projected.model == raw.model
    assert 0.6 - DEFAULT_TOLERANCE <= measured_ratio(a, projected) <= 0.6
    # Rates are exact channel fractions, so prune rounds them back to the same counts.
    counts = removed_counts(projected, a.macs_model)
    for name, n, c in zip(a.macs_model.group_names, counts, a.macs_model.channels, strict=True):
        assert projected.groups[name].rate == pytest.approx(n / c, abs=1e-6)


@pytest.mark.parametrize("name", by_size(["resnet20", "resnet56"]))
def test_projecting_a_projected_policy_changes_nothing(name: str) -> None:
    # Replay re-projects an exported (applied) policy; it must keep the exact rates it was measured with.
    a = arch(name)
    gen = torch.Generator().manual_seed(3)
    for target in (0.3, 0.5, 0.75):
        rates = {
            g: float(r)
            for g, r in zip(
                a.macs_model.group_names,
                torch.rand(len(a.macs_model.group_names), generator=gen),
                strict=True,
            )
        }
        once = project_to_budget(policy_for(a, rates, target), a.model, macs_model=a.macs_model)
        twice = project_to_budget(once, a.model, macs_model=a.macs_model)
        assert twice.groups == once.groups


@pytest.mark.parametrize("cap", [0.3, 0.5])
def test_rates_stay_within_the_cap(cap: float) -> None:
    a = arch("resnet56")
    rates = {g: 0.95 for g in a.macs_model.group_names}
    projected = project_to_budget(
        policy_for(a, rates, 0.7), a.model, macs_model=a.macs_model, max_rate=cap
    )
    assert all(g.rate <= cap for g in projected.groups.values())
    assert 0.7 - DEFAULT_TOLERANCE <= measured_ratio(a, projected) <= 0.7


def test_per_group_caps() -> None:
    a = arch("resnet20")
    rates = {g: 0.8 for g in a.macs_model.group_names}
    caps = {g: 0.9 for g in rates} | {"conv1": 0.0, "layer3.0.conv1": 0.25}
    projected = project_to_budget(
        policy_for(a, rates, 0.5), a.model, macs_model=a.macs_model, max_rate=caps
    )
    assert projected.groups["conv1"].rate == 0.0
    assert projected.groups["layer3.0.conv1"].rate <= 0.25
    assert measured_ratio(a, projected) <= 0.5


def test_every_group_keeps_a_channel_even_with_a_cap_of_one() -> None:
    a = arch("resnet20")
    rates = {g: 0.99 for g in a.macs_model.group_names}
    projected = project_to_budget(
        policy_for(a, rates, 0.05), a.model, macs_model=a.macs_model, max_rate=1.0
    )
    for name, c in zip(a.macs_model.group_names, a.macs_model.channels, strict=True):
        assert round(projected.groups[name].rate * c) <= c - 1
    pruned = copy.deepcopy(a.model)
    prune.apply(pruned, projected)
    assert min(kept_channels(pruned)) >= 1
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_all_zero_rates_cannot_reach_a_target_below_one() -> None:
    a = arch("resnet20")
    rates = {g: 0.0 for g in a.macs_model.group_names}
    with pytest.raises(UserError, match=r"every group rate is 0") as exc:
        project_to_budget(policy_for(a, rates, 0.5), a.model, macs_model=a.macs_model)
    assert "0.5" in str(exc.value)
    with pytest.raises(UserError, match=r"every group rate is 0"):
        project_to_budget(policy_for(a, {}, 0.5), a.model, macs_model=a.macs_model)


@pytest.mark.parametrize("rates", [{}, {"conv1": 0.0}, {"conv1": 0.5, "layer2.1.conv1": 0.3}])
def test_a_target_of_one_prunes_nothing(rates: dict[str, float]) -> None:
    a = arch("resnet20")
    projected = project_to_budget(policy_for(a, rates, 1.0), a.model, macs_model=a.macs_model)
    assert all(g.rate == 0.0 for g in projected.groups.values())
    assert measured_ratio(a, projected) == 1.0


def test_without_a_target_the_rates_are_applied_as_written() -> None:
    a = arch("resnet20")
    raw = policy_for(a, {"conv1": 0.5, "layer2.1.conv1": 0.25}, None)
    assert project_to_budget(raw, a.model) is raw


def test_groups_without_a_rate_are_left_alone() -> None:
    """A hand-written policy that prunes a few groups never has others pruned behind its back."""
    a = arch("resnet20")
    rates = {"layer2.0.conv1": 0.6, "layer2.1.conv1": 0.6, "layer2.2.conv1": 0.6}
    projected = project_to_budget(policy_for(a, rates, 0.92), a.model, macs_model=a.macs_model)
    assert {g for g, gp in projected.groups.items() if gp.rate > 0} <= set(rates)
    assert 0.92 - DEFAULT_TOLERANCE <= measured_ratio(a, projected) <= 0.92


def test_unreachable_target_says_what_is_reachable() -> None:
    a = arch("resnet20")
    # Only one narrow group may be pruned: its cap bounds how far MACs can fall.
    with pytest.raises(UserError, match=r"unreachable.*smallest reachable MACs ratio is 0\.\d+"):
        project_to_budget(
            policy_for(a, {"layer1.0.conv1": 0.5}, 0.5), a.model, macs_model=a.macs_model
        )


def test_unknown_group_is_a_user_error() -> None:
    a = arch("resnet20")
    with pytest.raises(UserError, match=r"layer9\.conv1.*allowed: .*conv1"):
        project_to_budget(policy_for(a, {"layer9.conv1": 0.5}, 0.5), a.model)


def test_counting_reports_macs_and_params_of_the_base() -> None:
    a = arch("resnet20")
    macs, params = count_macs_params(a.model, a.spec.example_inputs())
    assert 40e6 < macs < 43e6  # ResNet-20 on 32x32: about 41M MACs (published: 41M FLOPs)
    assert params == sum(p.numel() for p in a.model.parameters())
    assert a.model.training is False  # counting leaves the mode as it was


@pytest.mark.parametrize("name", by_size(["resnet20", "mobilenetv2"]))
def test_analytic_count_is_exact_and_independent_of_allocator_history(name: str) -> None:
    """The analytic MACs model is the same however memory was used before it was built.

    It once keyed tensors by ``id()`` without keeping them alive, so a freed tensor's id could
    be reused by a later one: which groups a ReLU belonged to depended on the allocator, and a
    Ray worker projected the same policy to different rates than the driver process.
    """
    a = arch(name)
    inputs = a.spec.example_inputs()
    g = torch.Generator().manual_seed(0)
    counts = [c // 3 for c in a.macs_model.channels]
    # Groups removed one at a time probe every group's share, not just the sum.
    probes = [counts] + [
        [n if i == j else 0 for j, n in enumerate(counts)] for i in range(len(counts))
    ]
    reference = [a.macs_model.macs(p) for p in probes]
    junk = []
    for k in range(12):
        junk.append(torch.randn(int(torch.randint(1, 5000, (1,), generator=g)) + k))
        again = MacsModel(a.model, inputs)
        assert [again.macs(p) for p in probes] == reference
    # And the analytic count is what torch-pruning measures on the pruned model.
    names = a.macs_model.group_names
    policy = policy_for(
        a, {n: c / ch for n, c, ch in zip(names, counts, a.macs_model.channels, strict=True)}, None
    )
    assert measured_ratio(a, policy) == pytest.approx(a.macs_model.ratio(counts), abs=2e-4)
