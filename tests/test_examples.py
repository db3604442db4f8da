"""The example front committed under policies/examples/ still fits the engine that replays it.

The files are the output of `make demo` (ResNet-20 on MNIST-5k at a 0.5 budget). Which
channels go depends on the trained base model, but how many, and so the MACs, depend only on
the architecture: the committed measurements must be reproduced by today's projection and
pruning code, or the examples (and the README that points at them) have gone stale.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from autoprune import prune
from autoprune.budget import project_to_budget
from autoprune.macs import count_macs_params
from autoprune.policy import Policy

EXAMPLES = Path(__file__).resolve().parents[1] / "policies" / "examples"
FRONTS = sorted(p.parent for p in EXAMPLES.glob("*/front.yaml"))


def test_there_is_an_example_front() -> None:
    assert FRONTS, f"no example front under {EXAMPLES}"


@pytest.mark.parametrize("front", FRONTS, ids=lambda p: p.name)
def test_example_front_lists_its_policies_and_they_reproduce_their_macs(front: Path) -> None:
    listed = yaml.safe_load((front / "front.yaml").read_text())["front"]
    assert sorted(row["file"] for row in listed) == sorted(
        p.name for p in front.glob("trial-*.yaml")
    )
    for row in listed:
        policy = Policy.load(front / row["file"])
        assert policy.measured["macs_ratio"] == pytest.approx(row["macs_ratio"], abs=1e-6)
        assert policy.base.checkpoint and not Path(policy.base.checkpoint).is_absolute()
        model = policy.model.build().eval()
        inputs = policy.model.example_inputs()
        base_macs = count_macs_params(model, inputs)[0]
        # An applied policy is a fixed point of projection: replay prunes exactly these rates.
        projected = project_to_budget(policy, copy.deepcopy(model), inputs)
        assert projected.groups == policy.groups
        # Counting needs no trained weights or data: prune by magnitude at the same rates.
        structural = replace(
            projected,
            groups={n: replace(g, criterion="l1") for n, g in projected.groups.items()},
        )
        pruned = prune.apply(copy.deepcopy(model), structural, example_inputs=inputs).model
        ratio = count_macs_params(pruned, inputs)[0] / base_macs
        assert ratio == pytest.approx(policy.measured["macs_ratio"], abs=5e-6)
        assert ratio <= 0.5
