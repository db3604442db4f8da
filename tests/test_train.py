"""The fine-tuning loop's kernel-orthogonality regulariser (class-aware pruning's retrain)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.train import orthogonality_penalty


def test_orthogonal_filters_cost_nothing_and_duplicates_cost_their_overlap() -> None:
    conv = nn.Conv2d(4, 3, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(3):  # one-hot filters: mutually orthogonal
            conv.weight[i].view(-1)[i] = 2.0
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(3, 3, 1))  # 1x1 convs are not penalised
    assert orthogonality_penalty(model).item() < 1e-10
    with torch.no_grad():
        conv.weight[1] = conv.weight[0] * 5  # filter 1 now duplicates filter 0 (scale is ignored)
    # Gram entries (0,1) and (1,0) become 1 instead of 0: the squared Frobenius distance is 2.
    assert orthogonality_penalty(model).item() == pytest.approx(2.0, abs=1e-5)


def test_the_penalty_has_gradients_that_decorrelate_filters() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    before = orthogonality_penalty(conv).item()
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        orthogonality_penalty(conv).backward()
        optimizer.step()
    assert orthogonality_penalty(conv).item() < 0.5 * before
