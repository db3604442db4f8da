"""INT8 under ONNX Runtime: the accuracy and latency of what actually ships.

Edge deployments run a pruned network quantized to INT8, and pruning and quantization can break
each other: a layer pruned thin may have a weight range that 8 bits represent badly. So
:func:`int8_report` quantizes the exported fp32 ONNX file with ONNX Runtime's static
quantization (``quantize_static``: QDQ format, per-channel INT8 weights, INT8 activations
calibrated by min/max on training images), then measures both files the same way: top-1 on
the test split and latency at batch 1 and 32 (median and interquartile range) under ONNX
Runtime's CPU execution provider.

Needs the ``onnx`` extra (``onnx``, ``onnxruntime``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from autoprune.errors import UserError
from autoprune.files import atomic_write
from autoprune.onnx_export import require_onnx

CALIBRATION_IMAGES = 512  # training images the activation ranges are calibrated on
CALIBRATION_BATCH = 64
LATENCY_BATCHES = (1, 32)


@dataclass
class Timing:
    """Milliseconds per forward pass over repeated runs."""

    median_ms: float
    q1_ms: float
    q3_ms: float

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms


@dataclass
class QuantizedModel:
    """One file's measurements: its precision, size, test accuracy and latency per batch."""

    precision: str  # fp32 | int8
    path: Path
    size_bytes: int
    test_accuracy: float
    latency: dict[int, Timing] = field(default_factory=dict)  # batch -> timing


@dataclass
class Int8Report:
    """fp32 and INT8 side by side (:func:`int8_report`)."""

    fp32: QuantizedModel
    int8: QuantizedModel
    test_images: int
    calibration_images: int


def _images(dataset: Dataset, count: int, batch: int) -> Iterator[np.ndarray]:
    """The first ``count`` images of ``dataset`` as float32 arrays of up to ``batch``."""
    from autoprune.data import batches

    seen = 0
    for images, _ in batches(dataset, batch, device=None):
        take = images[: count - seen].float().numpy()
        seen += len(take)
        yield take
        if seen >= count:
            return


def _reader(dataset: Dataset, count: int, batch: int) -> Any:
    """An ONNX Runtime ``CalibrationDataReader`` over training images (input ``input``)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feed = _images(dataset, count, batch)

        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(self.feed, None)
            return None if images is None else {"input": images}

    return Reader()


def quantize_int8(
    fp32: Path, out: Path, calibration: Dataset, images: int = CALIBRATION_IMAGES
) -> Path:
    """Static INT8 quantization of an ONNX file (QDQ, per-channel weights) written to ``out``.

    Raises:
        UserError: no calibration image, or ONNX Runtime cannot quantize the graph.
    """
    require_onnx()
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:  # type: ignore[arg-type]
        raise UserError("INT8 calibration needs training images, and the training split is empty")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:  # shape inference and graph folding, as ONNX Runtime recommends before quantizing
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        except Exception:  # optional: then the exported graph is quantized as it is
            prepared = fp32
        try:
            with atomic_write(out) as tmp:
                quantize_static(
                    str(prepared),
                    str(tmp),
                    _reader(calibration, min(images, len(calibration)), CALIBRATION_BATCH),  # type: ignore[arg-type]
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except UserError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(
                f"ONNX Runtime could not quantize {fp32} to INT8 ({type(exc).__name__}: {first})"
            ) from exc
    return out


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(
    path: Path, dataset: Dataset, threads: int | None = None, batch: int = 256
) -> tuple[float, int]:
    """Top-1 accuracy of an ONNX classifier on ``dataset``, and the images counted."""
    from autoprune.data import batches

    session = _session(path, threads)
    correct = seen = 0
    for images, labels in batches(dataset, batch, device=None):
        logits = session.run(None, {"input": images.float().numpy()})[0]
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        seen += len(labels)
    if seen == 0:
        raise UserError("the test split is empty: there is nothing to measure accuracy on")
    return correct / seen, seen


def onnx_latency(
    path: Path, example: np.ndarray, repeats: int, threads: int | None = None, warmup: int = 3
) -> Timing:
    """Median and quartiles of ``repeats`` timed runs on ``example`` (after ``warmup``)."""
    session = _session(path, threads)
    feed = {"input": example}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    if len(times) < 2:
        return Timing(times[0], times[0], times[0])
    q1, median, q3 = statistics.quantiles(times, n=4)
    return Timing(median, q1, q3)


def int8_report(
    fp32: Path,
    out: Path,
    calibration: Dataset,
    test: Dataset,
    example: np.ndarray,
    repeats: int = 30,
    threads: int | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> Int8Report:
    """Quantize ``fp32`` to ``out`` and measure both: test accuracy and latency per batch.

    ``example`` is one input image (1, C, H, W); the latency batches repeat it.
    """
    quantize_int8(fp32, out, calibration, calibration_images)
    measured = []
    for precision, path in (("fp32", fp32), ("int8", out)):
        accuracy, seen = onnx_accuracy(path, test, threads)
        latency = {
            b: onnx_latency(path, np.repeat(example[:1], b, axis=0), repeats, threads)
            for b in LATENCY_BATCHES
        }
        measured.append(QuantizedModel(precision, path, path.stat().st_size, accuracy, latency))
    return Int8Report(
        measured[0],
        measured[1],
        seen,
        min(calibration_images, len(calibration)),  # type: ignore[arg-type]
    )
