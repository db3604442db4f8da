"""What several test modules share that is not a fixture: the small search space real searches use.

Fixtures (``workdir``, ``trained_base``, ...) are in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

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
