"""The tools a user would pick instead of a search, each run by its own library.

* :func:`torch_pruning_global`: Torch-Pruning's recipe as its README gives it: ``MetaPruner``
  with ``global_pruning=True``, several ``iterative_steps`` and ``GroupMagnitudeImportance(p=2)``
  or ``GroupTaylorImportance``. Its knob is a channel ratio, not a MACs budget, so the ratio is
  bisected until the pruned model's MACs are at or just under the budget.
* :func:`fastnas`: NVIDIA ModelOpt's FastNAS (``modelopt.torch.prune.prune`` in ``fastnas``
  mode) under a FLOPs constraint. Its sensitivity map depends only on the model and the score
  data, so a ``checkpoint`` path lets later budgets of the same base reuse it. The subnet comes
  back with the full model's BatchNorm statistics, so they are re-estimated before use.

Both hand back a plain ``nn.Module`` that autoprune's fine-tune (:func:`autoprune.train.fit`) and
evaluation accept, and MACs counted by autoprune's own counter, so every method in a benchmark is
measured the same way. The libraries come with the ``peers`` extra (``pip install
'autoprune[peers]'``); :func:`missing` says which are absent and why.
"""

from __future__ import annotations

import copy
import importlib
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from autoprune.data.loader import batches
from autoprune.groups import classifier_layers
from autoprune.macs import count_macs_params
from autoprune.train import evaluate, recalibrate_batchnorm

# The modules each peer imports (pyproject's ``peers`` extra installs them).
REQUIREMENTS = {
    "torch-pruning": ["torch_pruning"],
    "fastnas": ["modelopt.torch.prune", "torchprofile"],
}
TP_IMPORTANCES = ("magnitude", "taylor")


class PeerUnavailable(RuntimeError):
    """A peer cannot produce a model for this setting; the message says why (it goes in a table)."""


@dataclass
class PeerResult:
    """A peer's pruned model and what it took to get it."""

    model: nn.Module
    macs_ratio: float  # pruned MACs / base MACs, by autoprune's counter
    wall_s: float  # time the peer's library spent choosing and cutting channels
    detail: dict[str, Any] = field(default_factory=dict)  # the peer's own knobs, for the JSON


def missing() -> dict[str, str]:
    """Peers whose libraries do not import here, with the import error (empty: all present)."""
    out = {}
    for peer, modules in REQUIREMENTS.items():
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ModelOpt raises more than ImportError when half-installed
                out[peer] = (
                    f"{module}: {type(exc).__name__}: {exc} (pip install 'autoprune[peers]')"
                )
                break
    return out


def message_lines(exc: BaseException) -> list[str]:
    """The non-blank lines of an error's message, stripped (a library's may be a whole report)."""
    return [line.strip() for line in str(exc).splitlines() if line.strip()]


def _macs_ratio(model: nn.Module, example_inputs: torch.Tensor, base_macs: int) -> float:
    return count_macs_params(model, example_inputs)[0] / base_macs


def _taylor_gradients(
    model: nn.Module, calibration: Dataset, device: torch.device, images: int, batch_size: int
) -> None:
    """Accumulate the loss gradient over ``images`` calibration images (what Taylor scores read)."""
    model.zero_grad()
    model.train()
    seen = 0
    for inputs, labels in batches(calibration, batch_size, device=device):
        F.cross_entropy(model(inputs.float()), labels).backward()
        seen += len(labels)
        if seen >= images:
            break
    model.eval()


def torch_pruning_global(
    model: nn.Module,
    example_inputs: torch.Tensor,
    target: float,
    *,
    importance: str = "magnitude",
    steps: int = 5,
    calibration: Dataset | None = None,
    calibration_images: int = 256,
    device: torch.device | None = None,
    max_pruning_ratio: float = 0.95,
    tolerance: float = 0.005,
    max_bisections: int = 16,
) -> PeerResult:
    """Torch-Pruning's global iterative pruning of a copy of ``model`` to ``target`` x its MACs.

    Args:
        model: the trained network (left untouched).
        example_inputs: one input batch on the model's device, for tracing and counting MACs.
        target: the MACs budget as a share of ``model``'s MACs, in (0, 1].
        importance: ``magnitude`` (``GroupMagnitudeImportance(p=2)``) or ``taylor``
            (``GroupTaylorImportance``, gradients of the loss on ``calibration`` before each step).
        steps: ``iterative_steps`` of the pruner.
        max_pruning_ratio: the most any one layer may lose (Torch-Pruning's own cap).
        tolerance: stop bisecting once the MACs ratio is within this below ``target``.

    Raises:
        PeerUnavailable: not even ``max_pruning_ratio`` reaches the budget.
    """
    import torch_pruning as tp

    if importance not in TP_IMPORTANCES:
        raise ValueError(f"importance {importance!r}: one of {', '.join(TP_IMPORTANCES)}")
    if importance == "taylor" and calibration is None:
        raise ValueError("Taylor importance needs calibration data")
    device = device or example_inputs.device
    base_macs = count_macs_params(model, example_inputs)[0]
    t0 = time.perf_counter()

    def prune_at(ratio: float) -> tuple[nn.Module, float]:
        pruned = copy.deepcopy(model).to(device).eval()
        imp = (
            tp.importance.GroupMagnitudeImportance(p=2)
            if importance == "magnitude"
            else tp.importance.GroupTaylorImportance()
        )
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs,
            importance=imp,
            global_pruning=True,
            pruning_ratio=ratio,
            iterative_steps=steps,
            max_pruning_ratio=max_pruning_ratio,
            ignored_layers=classifier_layers(pruned),
        )
        for _ in range(steps):
            if importance == "taylor":
                assert calibration is not None
                _taylor_gradients(pruned, calibration, device, calibration_images, 64)
            pruner.step()
        pruned.zero_grad(set_to_none=True)
        return pruned, _macs_ratio(pruned, example_inputs, base_macs)

    # The channel ratio that meets the budget: MACs fall monotonically (up to ties) with it.
    pruned, achieved = prune_at(max_pruning_ratio)
    if achieved > target:
        raise PeerUnavailable(
            f"pruning every layer by up to {max_pruning_ratio:g} leaves {achieved:.3f} of the "
            f"MACs, above the budget {target:g}"
        )
    best = (pruned, achieved, max_pruning_ratio)
    low, high = 0.0, max_pruning_ratio
    for _ in range(max_bisections):
        if target - best[1] <= tolerance:
            break
        ratio = (low + high) / 2
        pruned, achieved = prune_at(ratio)
        if achieved <= target:
            best, high = (pruned, achieved, ratio), ratio
        else:
            low = ratio
    pruned, achieved, ratio = best
    return PeerResult(
        pruned.cpu(),
        achieved,
        time.perf_counter() - t0,
        {"importance": importance, "iterative_steps": steps, "pruning_ratio": round(ratio, 5)},
    )


def _loader(dataset: Dataset, batch_size: int, count: int) -> list[tuple[torch.Tensor, Any]]:
    """``count`` fixed batches of ``dataset`` (FastNAS iterates its data loader many times)."""
    return list(islice(batches(dataset, batch_size), count))


def fastnas(
    model: nn.Module,
    example_inputs: torch.Tensor,
    target: float,
    *,
    train: Dataset,
    score: Dataset,
    checkpoint: str | Path | None = None,
    divisor: int = 8,
    calibration_batches: int = 50,
    batch_size: int = 64,
    device: torch.device | None = None,
    recalibration_batches: int = 50,
    log: Callable[[str], Any] | None = None,
) -> PeerResult:
    """ModelOpt FastNAS on a copy of ``model`` under a FLOPs constraint of ``target`` x its own.

    Args:
        train: training images (unaugmented is best): FastNAS recalibrates BatchNorm on
            ``calibration_batches`` batches of them before scoring each subnet (it needs 50).
        score: the images FastNAS's ``score_func`` measures accuracy on (keep it small: the
            sensitivity map scores every width of every searchable layer).
        checkpoint: FastNAS's search state; a later call on the same model and score data
            reuses its sensitivity map and only runs the binary search.
        divisor: ``channel_divisor``/``feature_divisor``; ModelOpt's default of 32 leaves a
            16-to-64-channel network 3 widths, too few to meet most budgets.
        recalibration_batches: BatchNorm statistics of the returned subnet are re-estimated on
            this many training batches (FastNAS hands back the full model's).

    Raises:
        PeerUnavailable: FastNAS finds no subnet under the budget, or no width to search at
            this ``divisor``: ModelOpt's verdict (the last line of its report), in one line.
    """
    import modelopt.torch.prune as mtp
    from modelopt.torch.opt.conversion import ApplyModeError

    device = device or example_inputs.device
    base_macs = count_macs_params(model, example_inputs)[0]
    subject = copy.deepcopy(model).to(device).eval()
    loader = _loader(train, batch_size, calibration_batches)

    def score_func(candidate: nn.Module) -> float:
        candidate.eval()  # FastNAS hands over the model in train mode after calibrating BN
        return evaluate(candidate, score, device).accuracy

    mode = [
        (
            "fastnas",
            {
                "nn.Conv2d": {"*": {"channel_divisor": divisor}},
                "nn.BatchNorm2d": {"*": {"feature_divisor": divisor}},
                "nn.Linear": {"*": {"feature_divisor": divisor}},
            },
        )
    ]
    config: dict[str, Any] = {
        "data_loader": loader,
        "collect_func": lambda batch: batch[0].float(),
        "max_iter_data_loader": calibration_batches,
        "score_func": score_func,
        "verbose": False,
    }
    if checkpoint is not None:
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        config["checkpoint"] = str(checkpoint)
    t0 = time.perf_counter()
    try:
        with _quiet(log):
            pruned, _state = mtp.prune(
                subject,
                mode=mode,
                constraints={"flops": f"{100 * target:g}%"},
                dummy_input=example_inputs,
                config=config,
            )
    except (ValueError, ApplyModeError) as exc:  # no subnet meets the budget; nothing to search
        # ModelOpt's message is a profiling report whose conclusion comes last
        lines = message_lines(exc)
        said = lines[-1] if lines else type(exc).__name__
        raise PeerUnavailable(f"FastNAS (channel_divisor {divisor}): {said}"[:200]) from exc
    pruned = _plain(pruned)
    recalibrate_batchnorm(pruned, train, device, num_batches=recalibration_batches, batch_size=128)
    achieved = _macs_ratio(pruned.eval(), example_inputs, base_macs)
    wall = time.perf_counter() - t0
    if achieved > target + 0.01:
        raise PeerUnavailable(
            f"FastNAS returned {achieved:.3f} of the MACs for a {target:g} FLOPs constraint"
        )
    return PeerResult(
        pruned.cpu(),
        achieved,
        wall,
        {"channel_divisor": divisor, "score_images": len(score)},  # type: ignore[arg-type]
    )


def _plain(model: nn.Module) -> nn.Module:
    """The searched subnet, checked to be ordinary torch modules (``prune`` exports it itself)."""
    dynamic = sorted(
        {type(m).__module__ for m in model.modules() if "modelopt" in type(m).__module__}
    )
    if dynamic:
        raise PeerUnavailable(f"FastNAS returned ModelOpt's dynamic modules ({', '.join(dynamic)})")
    return model


@contextmanager
def _quiet(log: Callable[[str], Any] | None) -> Iterator[None]:
    """Keep ModelOpt's progress bars and prints out of the benchmark's table (their tail to ``log``)."""
    buffer = io.StringIO()
    try:
        with redirect_stdout(buffer), redirect_stderr(buffer):
            yield
    finally:
        if log is not None:
            for line in buffer.getvalue().splitlines()[-5:]:
                log(line)
