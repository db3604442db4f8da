"""The projection contract, run for every registered model and every structure in
``tests/structures.py``, the way Optuna runs every sampler through one test case.

For each model, at budgets 0.2, 0.35, 0.5 and 0.8, with ``channel_multiple`` 1 and 8, and one
and two iterative steps, either the budget is out of reach and :func:`check_reachable` says so
before any trial (and projection agrees), or a policy of uneven raw rates is projected and
applied, and:

- the pruned model's MACs, counted afresh by torch-pruning, are at most the target and within
  0.01 of it;
- the pruned model runs forward;
- replaying the applied policy (through YAML, as an exported policy is) removes the same
  channels.

The structures are where a group's channels spread over layers of unequal cost (the branches of
a concatenation), so only the exact count of the ranked channels lands on the target there.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace
from functools import cache

import pytest
import torch
from helpers import by_size
from structures import STRUCTURES
from torch import nn

from autoprune import models, prune
from autoprune.budget import DEFAULT_TOLERANCE, check_reachable, project_to_budget
from autoprune.errors import UserError
from autoprune.groups import channels_to_remove
from autoprune.macs import MacsModel, count_macs_params
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy, Schedule

BUDGETS = (0.2, 0.35, 0.5, 0.8)
MULTIPLES = (1, 8)
STEPS = (1, 2)
MAX_RATE = 0.9
MODELS = sorted(models.available()) + [f"structures:{name}" for name in STRUCTURES]


@dataclass
class Arch:
    spec: ModelSpec
    model: nn.Module  # unpruned; never modified (cases prune deep copies)
    inputs: torch.Tensor
    macs_model: MacsModel
    base_macs: float


@cache
def arch(name: str) -> Arch:
    torch.manual_seed(0)
    if name.startswith("structures:"):
        spec = ModelSpec(name, 10, (3, 32, 32))
        model = STRUCTURES[name.split(":")[1]](10, 3).eval()
    else:
        spec = ModelSpec(name, 10, (3, 32, 32))
        model = spec.build().eval()
    inputs = spec.example_inputs()
    return Arch(spec, model, inputs, MacsModel(model, inputs), count_macs_params(model, inputs)[0])


def uneven_policy(a: Arch, budget: float, multiple: int, steps: int) -> Policy:
    """Raw rates a sampler might propose: uneven, seeded by the case."""
    rng = random.Random(f"{a.spec.name}-{budget}-{multiple}-{steps}")
    return Policy(
        model=a.spec,
        groups={n: GroupPolicy(rate=rng.uniform(0.1, 0.9)) for n in a.macs_model.group_names},
        target_macs_ratio=budget,
        channel_multiple=multiple,
        schedule=Schedule(iterative_steps=steps),
    )


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("multiple", MULTIPLES)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", by_size(MODELS))
def test_projection_contract(name: str, budget: float, multiple: int, steps: int) -> None:
    a = arch(name)
    policy = uneven_policy(a, budget, multiple, steps)
    try:
        check_reachable(a.macs_model, budget, MAX_RATE, multiple, name)
    except UserError as exc:
        # Out of reach: said before any trial, with the reason; projection agrees.
        assert "out of reach" in str(exc) and f"{budget:g}" in str(exc)
        with pytest.raises(UserError, match="unreachable"):
            project_to_budget(policy, a.model, a.inputs, max_rate=MAX_RATE, macs_model=a.macs_model)
        return
    projected = project_to_budget(
        policy, a.model, a.inputs, max_rate=MAX_RATE, macs_model=a.macs_model
    )
    result = prune.apply(
        copy.deepcopy(a.model), projected, example_inputs=a.inputs, macs_model=a.macs_model
    )

    ratio = count_macs_params(result.model, a.inputs)[0] / a.base_macs
    assert ratio <= budget, f"MACs ratio {ratio:.4f} is over the target {budget}"
    assert budget - ratio <= DEFAULT_TOLERANCE, f"MACs ratio {ratio:.4f} is far under {budget}"
    with torch.no_grad():
        assert result.model(a.inputs).shape == (1, 10)
    channels = dict(zip(a.macs_model.group_names, a.macs_model.channels, strict=True))
    for group, gp in result.policy.groups.items():
        lost = channels_to_remove(gp.rate, channels[group])
        assert lost == 0 or (channels[group] - lost) % multiple == 0, f"{group} keeps no multiple"

    exported = Policy.from_yaml(
        replace(result.policy, removed_sha256=result.removed_sha256).to_yaml(), source="export"
    )
    again = prune.apply(
        copy.deepcopy(a.model),
        project_to_budget(exported, a.model, a.inputs, max_rate=MAX_RATE, macs_model=a.macs_model),
        example_inputs=a.inputs,
        macs_model=a.macs_model,
    )
    assert again.removed_sha256 == result.removed_sha256, "the replay removed other channels"
