"""What several test modules share that is not a fixture: the small search space real searches
use, and a ResNet-20 space context that samples without a trained base.

Fixtures (``workdir``, ``trained_base``, ...) are in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from autoprune.modelspec import ModelSpec
from autoprune.space import SpaceContext

DATA = Path(__file__).parent / "data"
# The search space real searches in tests use: 0.1-epoch fine-tunes, three criteria.
FAST_SPACE = str(DATA / "fast_space.yaml")

# Models a sweep leaves to ``make test`` (marked slow): each costs seconds where ResNet-20 and
# the small user structures cost a fraction. The edit loop keeps every kind of layer they have:
# the user structure ``separable_se_concat`` has MobileNetV2's depthwise convolutions.
LARGE_MODELS = frozenset({"resnet32", "resnet56", "resnet110", "vgg16_bn", "mobilenetv2"})


def by_size(names: Iterable[str]) -> list[Any]:
    """``names`` as ``parametrize`` values, the large models among them marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE_MODELS else n for n in names]


def space_context(budget: float = 0.5, ranking: dict[str, list[str]] | None = None) -> SpaceContext:
    """ResNet-20's groups in two stages, with made-up priors: enough to sample any space."""
    from autoprune.models import create
    from autoprune.prune import build_graph, current_groups

    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    model = create("resnet20", num_classes=10, in_channels=1)
    names = list(current_groups(model, build_graph(model, spec.example_inputs())))
    stages = {n: ("a" if n.startswith(("conv1", "layer1")) else "b") for n in names}
    priors = {
        "uniform": {n: 0.5 for n in names},
        "global": {n: 0.3 for n in names},
        "sensitivity": {n: (0.1 if stages[n] == "a" else 0.6) for n in names},
    }
    return SpaceContext(
        spec=spec,
        budget=budget,
        group_names=names,
        group_stage=stages,
        block_ranking=ranking or {},
        priors=priors,
    )
