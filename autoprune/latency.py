"""Latency: how long a pruned model takes on the trial's device, relative to its base model.

MACs are what pruning removes; latency is what a user ships for, and the two part ways: a
pruned ResNet-50 at -51% MACs was only 1.35x faster in torch-pruning's benchmark, and channel
counts that are not multiples of 8 slow GPU and NPU kernels. ``--objective latency`` (or
``both``) measures every fine-tuned trial:

* the median of ``repeats`` timed samples after ``warmup`` untimed passes, on a fixed random
  batch of ``batch_size`` images, in eval mode without autograd, on the trial's device (CUDA is
  synchronised after every sample), with PyTorch eager or ONNX Runtime. A sample is as many
  passes as make the base model take 5 ms (timeit's autorange), divided back per pass;
* the base model is timed in the same process, its passes interleaved with the pruned
  model's, so load on a shared machine slows both alike and their ratio stays meaningful.

A latency budget cannot be projected onto before measuring, so a latency search calibrates
once: it times uniform L1 prunings of the base at a few MACs ratios and interpolates the MACs
ratio whose latency ratio meets ``--budget-latency``. Candidates are projected onto that MACs
target (and explore brackets below it); each trial's measured latency ratio is what the
constraint and the front use.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.logs import Log

RUNTIMES = ("torch", "onnxruntime")
# MACs ratios of the uniform prunings a latency search calibrates its MACs target on.
CALIBRATION_RATIOS = (0.2, 0.35, 0.5, 0.65, 0.8)


@dataclass(frozen=True)
class LatencySettings:
    """How a model is timed (``--latency-*`` options of ``search``)."""

    batch_size: int = 1  # images per timed forward pass
    repeats: int = 30  # timed samples (of one or more passes); the median is the latency
    warmup: int = 5  # untimed passes first (allocator, cuDNN autotuning, caches)
    runtime: str = "torch"  # torch (eager) | onnxruntime (CPU, or CUDA when the model is there)


@dataclass
class Latency:
    """A pruned model's median latency next to its base model's, timed together."""

    ms: float  # pruned model, milliseconds per forward pass of ``batch_size`` images
    base_ms: float  # base model, same settings, same process, interleaved
    device: str  # e.g. "cpu (2 threads)" or "cuda:0 (NVIDIA H100)"

    @property
    def ratio(self) -> float:
        return self.ms / self.base_ms


def measure(
    model: nn.Module,
    base_model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    settings: LatencySettings,
) -> Latency:
    """Time ``model`` against ``base_model`` on ``device`` (see the module docstring).

    Both models are timed on copies in eval mode, so a model mid fine-tune is left as it was.
    """
    inputs = torch.randn(
        settings.batch_size, *input_shape, generator=torch.Generator().manual_seed(0)
    )
    runners = [
        _runner(copy.deepcopy(m).eval().to(device), inputs.to(device), settings.runtime, device)
        for m in (model, base_model)
    ]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(settings.warmup):
            for run in runners:
                run()
        sync()
        number = _passes_per_sample(runners[1], sync)
        times: list[list[float]] = [[], []]
        for rep in range(settings.repeats):
            # Alternate which model goes first, so neither always runs on a cache the other warmed.
            for i in (0, 1) if rep % 2 == 0 else (1, 0):
                start = time.perf_counter()
                for _ in range(number):
                    runners[i]()
                sync()
                times[i].append((time.perf_counter() - start) * 1e3 / number)
    return Latency(
        ms=statistics.median(times[0]),
        base_ms=statistics.median(times[1]),
        device=describe(device, settings.runtime),
    )


# A timed sample runs a model this long at least (the base model; a pruned one is faster):
# passes of a small model take tens of microseconds, below what one timer read resolves well.
MIN_SAMPLE_SECONDS = 0.005


def _passes_per_sample(run: Callable[[], Any], sync: Callable[[], Any]) -> int:
    """Forward passes per timed sample, so one sample of the base model takes
    :data:`MIN_SAMPLE_SECONDS` (timeit's autorange, in powers of two)."""
    number = 1
    while number < 1024:
        start = time.perf_counter()
        for _ in range(number):
            run()
        sync()
        if time.perf_counter() - start >= MIN_SAMPLE_SECONDS:
            break
        number *= 2
    return number


def describe(device: torch.device, runtime: str = "torch") -> str:
    """The device a latency was measured on, as stored with each trial."""
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    return where if runtime == "torch" else f"{where}, {runtime}"


def _runner(
    model: nn.Module, inputs: torch.Tensor, runtime: str, device: torch.device
) -> Callable[[], Any]:
    if runtime == "torch":
        return lambda: model(inputs)
    if runtime == "onnxruntime":
        return _onnx_runner(model, inputs, device)
    raise UserError(f"latency runtime '{runtime}' is unknown; allowed: {', '.join(RUNTIMES)}")


def _onnx_runner(model: nn.Module, inputs: torch.Tensor, device: torch.device) -> Callable[[], Any]:
    """An ONNX Runtime session of ``model`` (exported as ``autoprune onnx`` does)."""
    from autoprune.onnx_export import export_onnx, require_onnx

    _, ort = require_onnx()
    with _temporary_file(".onnx") as path:
        export_onnx(model.cpu(), inputs.cpu(), path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=providers)
    feed = {session.get_inputs()[0].name: inputs.cpu().numpy()}
    return lambda: session.run(None, feed)


@contextmanager
def _temporary_file(suffix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="autoprune-latency-") as folder:
        yield Path(folder) / f"model{suffix}"


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """The MACs target a latency budget calls for, and the measurements it came from."""

    macs_target: float
    points: list[tuple[float, float]]  # (MACs ratio, latency ratio) of the uniform prunings

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs_target": self.macs_target,
            "points": [[round(m, 4), round(lat, 4)] for m, lat in self.points],
        }


def macs_target_for(points: list[tuple[float, float]], budget: float) -> float:
    """The largest MACs ratio whose interpolated latency ratio is at most ``budget``.

    ``points`` are (MACs ratio, latency ratio) pairs; (1, 1), the base model, is added. The
    latency curve is made monotone (running maximum from low MACs up), since timing noise can
    make a smaller model look slower, then interpolated linearly.
    """
    curve = sorted({*points, (1.0, 1.0)})
    monotone: list[tuple[float, float]] = []
    for macs, lat in curve:
        monotone.append((macs, max(lat, monotone[-1][1]) if monotone else lat))
    if monotone[0][1] > budget:
        lowest, lat = monotone[0]
        raise UserError(
            f"--budget-latency {budget:g} is out of reach on this device: uniform pruning to "
            f"MACs ratio {lowest:g} still takes {lat:.2f} of the base model's latency; raise "
            "--budget-latency, or time larger batches (--latency-batch-size) where pruning pays"
        )
    best = monotone[0][0]
    for (m0, l0), (m1, l1) in itertools.pairwise(monotone):
        if l1 <= budget:
            best = m1
        elif l0 <= budget:
            best = m0 + (m1 - m0) * (budget - l0) / (l1 - l0) if l1 > l0 else m0
            break
        else:
            break
    return round(min(1.0, best), 4)


def calibrate(
    prune_uniform: Callable[[float], nn.Module],
    base_model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    settings: LatencySettings,
    budget: float,
    log: Log = print,
) -> Calibration:
    """Time uniform prunings at :data:`CALIBRATION_RATIOS` and find the MACs target.

    ``prune_uniform(macs_ratio)`` returns the base model pruned uniformly (L1) to that ratio.
    """
    points = []
    for ratio in CALIBRATION_RATIOS:
        try:
            pruned = prune_uniform(ratio)
        except UserError:  # below what uniform pruning reaches under the rate cap
            continue
        timed = measure(pruned, base_model, input_shape, device, settings)
        points.append((ratio, timed.ratio))
    if not points:
        raise UserError(
            "latency calibration found no uniform pruning of this model it could time: the "
            "model's groups cannot reach MACs ratios up to 0.8; check `autoprune inspect`"
        )
    target = macs_target_for(points, budget)
    shown = ", ".join(f"{m:g}->{lat:.2f}" for m, lat in points)
    log(
        f"latency budget {budget:g}: uniform prunings timed on {describe(device, settings.runtime)} "
        f"(MACs ratio->latency ratio: {shown}); candidates target MACs ratio {target:g}"
    )
    return Calibration(target, points)
