"""The fine-tuning loop's kernel-orthogonality regulariser (class-aware pruning's retrain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- schedule


def test_warm_up_ramps_linearly_to_the_schedule_then_follows_it() -> None:
    from autoprune.policy import Retrain
    from autoprune.train import learning_rate

    recipe = Retrain(lr=0.1, schedule="constant")
    ramp = [learning_rate(recipe, step, 100, warmup_steps=4) for step in range(6)]
    assert ramp == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    cosine = Retrain(lr=0.1, schedule="cosine")
    assert learning_rate(cosine, 50, 100) == pytest.approx(0.05)
    assert learning_rate(cosine, 50, 100, warmup_steps=10) == learning_rate(cosine, 50, 100)
    assert learning_rate(cosine, 0, 100, warmup_steps=10) == pytest.approx(0.01)


def test_a_base_trains_with_one_epoch_of_warm_up(trained_base: Path, mnist5k_splits: Any) -> None:
    """From scratch at lr 0.1, ResNet-56 stayed at chance on MNIST-5k without a warm-up (seen on
    an H200 and on the CPU); the recipe stored with the base says what it trained with."""
    import math

    from autoprune.files import read_torch_file

    stored = read_torch_file(trained_base, "base", "retrain it")
    steps_per_epoch = math.ceil(len(mnist5k_splits.train) / 128)  # at the default batch size
    total = 3 * steps_per_epoch  # the fixture trains 3 epochs
    assert stored["train"]["warmup_steps"] == min(steps_per_epoch, total // 4)


def test_trial_fine_tunes_do_not_autotune_cudnn() -> None:
    """Every pruned candidate has shapes the process has not seen; autotuning them cost 5-9 s
    made a 1.5 s fine-tune epoch take 10.4 s on an H200 (benchmarks/gpu_campaign.py)."""
    from types import SimpleNamespace

    from autoprune.evaluate import ObjectiveConfig, _train_config
    from autoprune.policy import Retrain

    policy: Any = SimpleNamespace(retrain=Retrain())
    config = ObjectiveConfig(base_checkpoint="unused.pt", dataset="mnist5k")
    assert _train_config(policy, config, 1.0).cudnn_benchmark is False
