"""One prepared GPU run: the machine, the CUDA tests, fine-tune throughput and real searches per GPU.

    python benchmarks/gpu_campaign.py --out OUT                 # on a CUDA machine, ~7 minutes
    python benchmarks/gpu_campaign.py --out OUT --budget-s 300  # sized to the time it is given
    python benchmarks/gpu_campaign.py --dry-run --out OUT       # CPU, tiny sizes (CI runs this)

Stages, each in its own slice of ``--budget-s``; a stage that fails is recorded and the next
one still runs, so one broken part never costs the whole (scarce) GPU run:

1. ``machine``: Python, torch, CUDA and library versions, ``nvidia-smi``, free GPU memory.
2. ``cuda_tests``: the tests marked ``cuda`` (``pytest -m cuda``): passed, failed, skipped.
3. ``throughput``: ResNet-56 fine-tunes on Fashion-MNIST-shaped data (1x28x28, 10 classes)
   through :func:`autoprune.train.fit`, in Ray actors holding what a trial holds at
   ``--gpus-per-trial`` 1, 0.5 and 0.25 (1, 2 and 4 at once on one GPU), for bf16 and fp32
   autocast, channels-last on and off: images/s per trial and in total, GPU utilisation
   (``nvidia-smi`` sampled every 200 ms) and memory per trial (``nvidia-smi`` per process, and
   torch's peak reservation).
4. ``searches``: real ``autoprune search`` runs (embedded ResNet-20/MNIST-5k, Ray executor) at
   ``--gpus-per-trial`` 1, 0.5 and 0.25 with as many trials at once: fine-tuned trials per
   minute, failures, and ``show --timing``'s phase shares.

Everything goes to ``OUT``: ``campaign.log`` (all output), ``campaign.json`` (the results,
rewritten after every stage) and the final table on stdout. The GPU machine has no package
index: ``benchmarks/gpu_bundle.sh`` builds the archive of missing packages that travels with
the run (see the README, "On a GPU").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FRACTIONS = (1.0, 0.5, 0.25)  # --gpus-per-trial; 1/f trials share one GPU
PRECISIONS = ("bf16", "fp32")
LAYOUTS = (False, True)  # channels-last off, on


@dataclass
class Sizes:
    """How big each stage runs: the GPU run's, or the dry run's tiny ones."""

    device: str
    model: str = "resnet56"
    batch_size: int = 128  # autoprune's fine-tune default
    images: int = 16384  # synthetic training images per actor (resident on the device)
    warmup_steps: int = 20  # untimed steps per cell (cuDNN autotuning), then as many to calibrate
    min_steps: int = 30  # timed steps per cell at least
    timed: bool = True  # False: every cell runs min_steps, however long (the dry run)
    search_model: str = "resnet56"  # the searches' base: this model on mnist5k
    search_trials: int = 8  # fine-tuned trials per search (baselines included)
    base_epochs: float = 4.0  # the searches' base's training epochs
    search_fractions: tuple[float, ...] = FRACTIONS
    search_flags: tuple[str, ...] = ()  # more `autoprune search` flags
    autotune_pairs: int = 8  # pruned widths the autotune stage times each setting on
    throughput_fractions: tuple[float, ...] = FRACTIONS
    # what the cuda_tests stage collects: the whole suite on the GPU; in the dry run the one
    # file holding the cuda-marked tests (collecting all of them costs more than running these)
    cuda_test_paths: tuple[str, ...] = ("tests",)
    # the default space with a twentieth of an epoch per fine-tune and no sensitivity pass
    tiny_space: bool = False
    # slices of the whole budget per stage (the rest of a slice a stage leaves goes on)
    shares: dict[str, float] = field(
        default_factory=lambda: {
            "cuda_tests": 0.15,
            "throughput": 0.35,
            "autotune": 0.1,
            "searches": 0.4,
        }
    )

    @classmethod
    def dry_run(cls) -> Sizes:
        return cls(
            device="cpu",
            model="resnet20",
            batch_size=8,
            images=16,
            warmup_steps=1,
            min_steps=1,
            timed=False,
            search_model="resnet20",
            search_trials=1,
            base_epochs=0.2,
            search_fractions=(),  # the first-trial search runs the same code
            throughput_fractions=(1.0, 0.5),
            autotune_pairs=2,
            search_flags=("--baselines", "none", "--screen", "1"),
            tiny_space=True,
            cuda_test_paths=("tests/test_gpu_data_path.py",),
        )


class Campaign:
    """The run's log, its JSON of results and its clock."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.results: dict[str, Any] = {"budget_s": budget_s, "stages": {}}
        out.mkdir(parents=True, exist_ok=True)
        self._log = (out / "campaign.log").open("a", buffering=1)

    def log(self, line: str) -> None:
        stamped = f"[{self.elapsed():6.1f}s] {line}"
        print(stamped, flush=True)
        self._log.write(stamped + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "campaign.json").write_text(json.dumps(self.results, indent=1, default=str))

    def stage(self, name: str, run: Callable[[float], dict[str, Any]], seconds: float) -> None:
        """Run one stage with ``seconds`` to spend; record its result or its error, then save."""
        seconds = max(0.0, min(seconds, self.left()))
        self.log(f"== {name}: {seconds:.0f}s of {self.left():.0f}s left")
        began = time.monotonic()
        try:
            record = {"status": "ok", **run(seconds)}
        except Exception as exc:  # recorded, so the stages after it still run
            self.log(traceback.format_exc())
            record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        record["wall_s"] = round(time.monotonic() - began, 1)
        self.results["stages"][name] = record
        self.log(f"== {name}: {record['status']} in {record['wall_s']}s")
        self.save()


def run_logged(
    campaign: Campaign, argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Run ``argv`` with its output in the log; ``None`` as the code when it ran out of time.

    On timeout the process group gets SIGINT first (a search records what it finished), then
    SIGKILL 20 s later.
    """
    campaign.log("$ " + " ".join(argv))
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            campaign._log.write("    " + line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        campaign.log(f"timed out after {timeout:.0f}s: interrupting")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        code = None
    reader.join(timeout=5)
    return code, "".join(lines)


# --------------------------------------------------------------------------- 1. machine


def machine_stage(_seconds: float) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpus": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    for name in (
        "torchvision",
        "ray",
        "optuna",
        "torch-pruning",
        "zennit",
        "sqlalchemy",
        "pydantic",
    ):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "missing"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_free_gib"] = round(free / 2**30, 1)
        info["gpu_total_gib"] = round(total / 2**30, 1)
        info["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi"], capture_output=True, text=True, timeout=30
        ).stdout
    return info


def machine_logged(campaign: Campaign) -> Callable[[float], dict[str, Any]]:
    def run(seconds: float) -> dict[str, Any]:
        info = machine_stage(seconds)
        for key, value in info.items():
            campaign.log(f"{key}: {value}")
        return info

    return run


# --------------------------------------------------------------------------- 2. CUDA tests


def junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / skipped of a pytest JUnit XML report (errors count as failed), and the
    test modules that failed to import (``collection_errors``)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "collection_errors": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        error = case.find("error")
        if error is not None and "collection failure" in (error.get("message") or ""):
            counts["collection_errors"] += 1
        elif tags & {"failure", "error"}:
            counts["failed"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def cuda_tests_stage(
    campaign: Campaign, paths: tuple[str, ...]
) -> Callable[[float], dict[str, Any]]:
    def run(seconds: float) -> dict[str, Any]:
        report = campaign.out / "cuda-tests.xml"
        code, output = run_logged(
            campaign,
            [
                sys.executable,
                "-m",
                "pytest",
                "-m",
                "cuda",
                "-q",
                "-p",
                "no:cacheprovider",
                "--continue-on-collection-errors",
                f"--junitxml={report}",
                *paths,
            ],
            timeout=seconds,
        )
        if code is None or not report.exists():
            raise RuntimeError(f"pytest did not finish in {seconds:.0f}s")
        counts = junit_counts(report)
        failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return {**counts, "exit_code": code, "failures": failed}

    return run


# --------------------------------------------------------------------------- 3. throughput


def probe_class(ray: Any) -> Any:
    """A Ray actor that fine-tunes fresh models with :func:`autoprune.train.fit` and times it."""

    @ray.remote
    class FineTuneProbe:
        def __init__(self, sizes: Sizes) -> None:
            import torch

            from autoprune.data import TensorSplit

            torch.set_num_threads(1)
            self.sizes = sizes
            self.device = torch.device(sizes.device)
            generator = torch.Generator().manual_seed(0)
            self.split = TensorSplit(
                torch.randn(sizes.images, 1, 28, 28, generator=generator),
                torch.arange(sizes.images) % 10,
            )

        def fit(self, precision: str, channels_last: bool, steps: int) -> dict[str, Any]:
            import torch

            from autoprune import models
            from autoprune.policy import Retrain
            from autoprune.train import TrainConfig, fit

            sizes = self.sizes
            model = models.create(sizes.model, num_classes=10, in_channels=1)
            per_epoch = math.ceil(sizes.images / sizes.batch_size)
            config = TrainConfig(
                Retrain(epochs=steps / per_epoch, lr=0.02),
                batch_size=sizes.batch_size,
                precision=precision,
                channels_last=channels_last,
            )
            taken = math.ceil(config.retrain.epochs * per_epoch)
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            began = time.perf_counter()
            fit(model, self.split, config, self.device)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - began
            return {
                "pid": os.getpid(),
                "images": taken * sizes.batch_size,
                "wall_s": wall,
                "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
            }

    return FineTuneProbe


class GpuSampler:
    """``nvidia-smi`` sampled in the background: GPU utilisation and memory, per-process memory."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval = interval_ms / 1000
        self.available = shutil.which("nvidia-smi") is not None
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self.per_pid_mib: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _query(self, args: list[str]) -> list[list[str]]:
        out = subprocess.run(
            ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for util, mem in self._query(["--query-gpu=utilization.gpu,memory.used"])[:1]:
                    self.utilisation.append(float(util))
                    self.memory_mib.append(float(mem))
                for pid, mem in self._query(["--query-compute-apps=pid,used_memory"]):
                    self.per_pid_mib[int(pid)] = max(self.per_pid_mib.get(int(pid), 0), float(mem))
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def summary(self, pids: list[int]) -> dict[str, Any]:
        if not self.utilisation:
            return {
                "gpu_util_mean_pct": None,
                "gpu_util_samples": 0,
                "gpu_mem_max_mib": None,
                "smi_mib_per_trial": None,
            }
        per_trial = [self.per_pid_mib[p] for p in pids if p in self.per_pid_mib]
        return {
            "gpu_util_mean_pct": round(statistics.fmean(self.utilisation), 1),
            "gpu_util_samples": len(self.utilisation),
            "gpu_mem_max_mib": max(self.memory_mib),
            "smi_mib_per_trial": round(statistics.fmean(per_trial)) if per_trial else None,
        }


def throughput_stage(sizes: Sizes, campaign: Campaign) -> Callable[[float], dict[str, Any]]:
    def run(seconds: float) -> dict[str, Any]:
        import ray

        deadline = time.monotonic() + seconds
        cells = len(sizes.throughput_fractions) * len(PRECISIONS) * len(LAYOUTS)
        # Each cell: two warm-up phases and one timed phase; about 40% of a cell is timed.
        timed_s = max(1.0, 0.4 * (seconds - 30) / cells)
        rows: list[dict[str, Any]] = []
        ray.init(
            num_cpus=max(os.cpu_count() or 1, 4),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        try:
            probe = probe_class(ray)
            for fraction in sizes.throughput_fractions:
                count = round(1 / fraction)
                if sizes.device == "cuda":
                    options = {"num_gpus": fraction, "num_cpus": 1}
                else:  # the dry run shares the CPU the same way
                    options = {"num_gpus": 0, "num_cpus": fraction}
                actors = [probe.options(**options).remote(sizes) for _ in range(count)]
                for precision in PRECISIONS:
                    for channels_last in LAYOUTS:
                        if time.monotonic() > deadline:
                            campaign.log("throughput: out of time, cells left unmeasured")
                            break
                        row = measure_cell(ray, actors, sizes, precision, channels_last, timed_s)
                        row.update(gpus_per_trial=fraction, trials=count)
                        rows.append(row)
                        campaign.log(
                            f"throughput {fraction:g} GPU x{count} {precision} "
                            f"channels_last={channels_last}: {row['images_per_s_per_trial']:.0f} "
                            f"img/s per trial, {row['images_per_s_total']:.0f} total, "
                            f"util {row['gpu_util_mean_pct']}%, "
                            f"{row['smi_mib_per_trial']} MiB per trial (smi), "
                            f"{row['peak_reserved_mib_per_trial']} MiB (torch peak)"
                        )
                for actor in actors:
                    ray.kill(actor)
        finally:
            ray.shutdown()
        return {
            "model": sizes.model,
            "batch_size": sizes.batch_size,
            "timed_s": timed_s,
            "rows": rows,
        }

    return run


def measure_cell(
    ray: Any, actors: list[Any], sizes: Sizes, precision: str, channels_last: bool, seconds: float
) -> dict[str, Any]:
    """Warm up (cuDNN autotuning), calibrate steps to ``seconds``, then time all actors at once."""
    ray.get([a.fit.remote(precision, channels_last, sizes.warmup_steps) for a in actors])
    calibration = ray.get(
        [a.fit.remote(precision, channels_last, sizes.warmup_steps) for a in actors]
    )
    steps_per_s = min(r["images"] / sizes.batch_size / max(r["wall_s"], 1e-6) for r in calibration)
    steps = max(sizes.min_steps, int(steps_per_s * seconds)) if sizes.timed else sizes.min_steps
    with GpuSampler() as sampler:
        timed = ray.get([a.fit.remote(precision, channels_last, steps) for a in actors])
    per_trial = [r["images"] / r["wall_s"] for r in timed]
    peaks = [r["peak_reserved_mib"] for r in timed if r["peak_reserved_mib"] is not None]
    return {
        "precision": precision,
        "channels_last": channels_last,
        "steps": steps,
        "images_per_s_per_trial": statistics.fmean(per_trial),
        # every trial's images over the span all of them ran in
        "images_per_s_total": sum(r["images"] for r in timed) / max(r["wall_s"] for r in timed),
        "peak_reserved_mib_per_trial": round(statistics.fmean(peaks)) if peaks else None,
        **sampler.summary([r["pid"] for r in timed]),
    }


# --------------------------------------------------------------------------- autotuning


def autotune_stage(sizes: Sizes, campaign: Campaign) -> Callable[[float], dict[str, Any]]:
    """What cuDNN autotuning costs a trial: one fine-tune epoch of mnist5k (the default
    candidate's) on ResNet-56s pruned to widths the process has not seen, with
    ``cudnn.benchmark`` on and off.

    Every pruned candidate has new layer shapes, so autotuning (a kernel search per new shape)
    runs again in every trial. Both settings get shapes of their own: torch caches the kernel
    plan per shape whichever way it was found, so a setting run second on the same shapes
    would find the first one's plans. Pairs of neighbouring widths, order alternated.
    """

    def run(seconds: float) -> dict[str, Any]:
        import copy

        import torch
        import torch_pruning as tp

        from autoprune import data, models
        from autoprune.data import TensorSplit
        from autoprune.policy import Retrain
        from autoprune.train import TrainConfig, fit

        deadline = time.monotonic() + seconds
        device = torch.device(sizes.device)
        generator = torch.Generator().manual_seed(0)
        images = len(data.create("mnist5k").train) if sizes.timed else 2 * sizes.batch_size
        split = TensorSplit(
            torch.randn(images, 1, 28, 28, generator=generator), torch.arange(images) % 10
        )

        def pruned(ratio: float) -> Any:
            model = models.create(sizes.model, num_classes=10, in_channels=1)
            tp.pruner.MagnitudePruner(
                model,
                torch.randn(1, 1, 28, 28),
                importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio,
                ignored_layers=[model.fc],
            ).step()
            return model

        def timed_fit(model: Any, benchmark: bool) -> float:
            config = TrainConfig(
                Retrain(epochs=1.0, lr=0.02),
                batch_size=sizes.batch_size,
                cudnn_benchmark=benchmark,
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            fit(copy.deepcopy(model), split, config, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - began

        timed_fit(pruned(0.0), False)  # the process's first CUDA work, paid by neither setting
        rows = []
        for i, ratio in enumerate((0.1, 0.3, 0.5, 0.2, 0.4, 0.6, 0.15, 0.35)):
            if time.monotonic() > deadline - 15 or len(rows) >= sizes.autotune_pairs:
                break
            order = (True, False) if i % 2 == 0 else (False, True)
            walls = {b: timed_fit(pruned(ratio + 0.05 * k), b) for k, b in enumerate(order)}
            row = {"pruning_ratio": ratio, "benchmark_s": walls[True], "plain_s": walls[False]}
            rows.append(row)
            campaign.log(f"autotune: {json.dumps(row)}")
        diffs = [r["benchmark_s"] - r["plain_s"] for r in rows]
        return {
            "images": images,
            "rows": rows,
            "mean_benchmark_s": statistics.fmean(r["benchmark_s"] for r in rows),
            "mean_plain_s": statistics.fmean(r["plain_s"] for r in rows),
            "mean_diff_s": statistics.fmean(diffs),
            "se_diff_s": statistics.stdev(diffs) / math.sqrt(len(diffs))
            if len(diffs) > 1
            else None,
        }

    return run


# --------------------------------------------------------------------------- 4. searches


def searches_stage(sizes: Sizes, campaign: Campaign) -> Callable[[float], dict[str, Any]]:
    """Real searches: a first one that measures the time to a first fine-tuned trial (Ray's
    start, the sensitivity pass, a worker's first CUDA work), then one per fraction, stopped
    (SIGINT, as Ctrl-C) when its slice of time is spent, rated by steady state."""

    def run_in(home: Path, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        env = {"AUTOPRUNE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        autoprune = [sys.executable, "-m", "autoprune"]
        storage = f"sqlite:///{home / 'campaign.db'}"
        checkpoint = home / f"{sizes.search_model}-mnist5k.pt"
        flags = list(sizes.search_flags)
        if sizes.tiny_space:
            flags += ["--space", str(tiny_space(home / "tiny.yaml"))]
        began = time.monotonic()
        code, output = run_logged(
            campaign,
            [
                *autoprune,
                "train",
                "--model",
                sizes.search_model,
                "--dataset",
                "mnist5k",
                "--epochs",
                str(sizes.base_epochs),
                "--device",
                sizes.device,
                "--out",
                str(checkpoint),
            ],
            timeout=deadline - time.monotonic(),
            env=env,
        )
        base = {"exit_code": code, "wall_s": round(time.monotonic() - began, 1)}
        if code != 0:
            raise RuntimeError(f"training the searches' base failed (exit {code})")
        base["log"] = output.strip().splitlines()[-1]

        def search(study: str, fraction: float, trials: int, timeout: float) -> dict[str, Any]:
            count = round(1 / fraction)
            began, began_wall = time.monotonic(), time.time()
            code, _ = run_logged(
                campaign,
                [
                    *autoprune,
                    "search",
                    "--model",
                    sizes.search_model,
                    "--dataset",
                    "mnist5k",
                    "--base-checkpoint",
                    str(checkpoint),
                    "--budget-flops",
                    "0.5",
                    "--trials",
                    str(trials),
                    "--max-concurrent",
                    str(count),
                    "--gpus-per-trial",
                    str(fraction if sizes.device == "cuda" else 0),
                    "--device",
                    sizes.device,
                    "--storage",
                    storage,
                    "--study",
                    study,
                    "--policies-dir",
                    str(home / "policies"),
                    "--quiet",
                    *flags,
                ],
                timeout=timeout,
                env=env,
            )
            row: dict[str, Any] = {
                "model": sizes.search_model,
                "gpus_per_trial": fraction,
                "trials_at_once": count,
                "exit_code": code,
                "wall_s": round(time.monotonic() - began, 1),
                **trial_rates(storage, study, count, began_wall),
            }
            code, shown = run_logged(
                campaign,
                [*autoprune, "show", study, "--storage", storage, "--timing", "--format", "json"],
                timeout=60,
                env=env,
            )
            if code == 0 and "{" in shown:
                row["timing"] = json.loads(shown[shown.index("{") :]).get("timing")
            campaign.log(f"search {study}: {json.dumps(row, default=str)[:600]}")
            return row

        # One fine-tuned trial: what a user waits before the first result, and the sensitivity
        # cache the searches after it share.
        first = search("first-trial", 1.0, 1, min(deadline - time.monotonic(), 0.3 * seconds))
        rows = []
        fractions = sizes.search_fractions
        for i, fraction in enumerate(fractions):
            share = (deadline - time.monotonic()) / (len(fractions) - i)
            trials = sizes.search_trials if not sizes.timed else 1000  # stopped by time instead
            rows.append(search(f"gpu-{fraction:g}", fraction, trials, share))
        shutil.copy(home / "campaign.db", campaign.out / "searches.db")  # for `autoprune show`
        failed = [r["gpus_per_trial"] for r in [first, *rows] if r["exit_code"] not in (0, None)]
        out: dict[str, Any] = {"base": base, "first_trial": first, "rows": rows}
        if failed:
            out.update(status="error", error=f"searches at {failed} GPU failed (see the log)")
        return out

    def run(seconds: float) -> dict[str, Any]:
        home = Path(tempfile.mkdtemp(prefix="campaign-home-"))
        try:
            return run_in(home, seconds)
        finally:  # the studies came back as searches.db; the base and policies are not kept
            shutil.rmtree(home, ignore_errors=True)

    return run


def trial_rates(storage: str, study_name: str, workers: int, began_wall: float) -> dict[str, Any]:
    """A search's fine-tuned trials: counts, seconds to the first, and the steady-state rate.

    The steady state leaves out the first ``workers`` completions (each worker's first trial
    pays its process start and first CUDA work) and rates the rest over the span from the
    last of those to the last completion.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return {"complete": 0, "failed": 0, "screened": 0, "first_s": None, "trials_per_min": None}
    trials = study.get_trials(deepcopy=False)
    ends = sorted(
        t.datetime_complete.timestamp()
        for t in trials
        if t.state.name == "COMPLETE" and t.datetime_complete is not None
    )
    rate = None
    if len(ends) > workers + 1:
        rate = round((len(ends) - workers) / max(ends[-1] - ends[workers - 1], 1e-6) * 60, 1)
    return {
        "complete": len(ends),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "screened": sum(t.state.name == "PRUNED" for t in trials),
        "first_s": round(ends[0] - began_wall, 1) if ends else None,
        "trials_per_min": rate,
    }


def tiny_space(path: Path) -> Path:
    """The dry run's space: the default one with short fine-tunes, no sensitivity pass, and one
    data-free and one data-driven criterion (the base scores the driver ships to Ray's workers
    are still computed, for one criterion instead of the default's three)."""
    import yaml

    space = yaml.safe_load((REPO / "autoprune/search_spaces/default.yaml").read_text())
    space["retrain"]["epochs"] = [0.05]
    space["criteria"] = ["l1", "taylor"]
    space["allocation"]["priors"] = ["uniform", "global"]
    path.write_text(yaml.safe_dump(space))
    return path


# --------------------------------------------------------------------------- the table


def final_table(results: dict[str, Any]) -> str:
    stages = results["stages"]
    lines = []
    machine = stages.get("machine", {})
    lines.append(
        f"machine: {machine.get('gpu', 'no GPU')}, torch {machine.get('torch')}, CUDA "
        f"{machine.get('cuda')}, Python {machine.get('python')}, ray {machine.get('ray')}"
    )
    tests = stages.get("cuda_tests", {})
    lines.append(
        f"CUDA tests: {tests.get('passed', '-')} passed, {tests.get('failed', '-')} failed, "
        f"{tests.get('skipped', '-')} skipped, {tests.get('collection_errors', '-')} modules "
        f"not importable ({tests.get('status', 'not run')})"
    )
    for failure in tests.get("failures", []):
        lines.append(f"  {failure}")
    rows = stages.get("throughput", {}).get("rows", [])
    if rows:
        lines.append("")
        lines.append(
            f"{'GPU/trial':>9} {'trials':>6} {'precision':>9} {'ch-last':>7} {'img/s/trial':>11} "
            f"{'img/s total':>11} {'util %':>6} {'MiB/trial smi':>13} {'MiB/trial torch':>15}"
        )
        for r in rows:
            lines.append(
                f"{r['gpus_per_trial']:>9g} {r['trials']:>6} {r['precision']:>9} "
                f"{'on' if r['channels_last'] else 'off':>7} {r['images_per_s_per_trial']:>11.0f} "
                f"{r['images_per_s_total']:>11.0f} {_cell(r['gpu_util_mean_pct']):>6} "
                f"{_cell(r['smi_mib_per_trial']):>13} {_cell(r['peak_reserved_mib_per_trial']):>15}"
            )
    autotune = stages.get("autotune", {})
    if autotune.get("rows"):
        lines.append("")
        lines.append(
            f"cuDNN autotuning, one mnist5k fine-tune epoch per pruned {results['sizes']['model']} "
            f"({len(autotune['rows'])} widths): {autotune['mean_benchmark_s']:.2f} s with "
            f"benchmark, {autotune['mean_plain_s']:.2f} s without; difference "
            f"{autotune['mean_diff_s']:+.2f} s (SE {_cell(autotune['se_diff_s'] and round(autotune['se_diff_s'], 2))})"
        )
    searches = stages.get("searches", {})
    if searches.get("rows") or searches.get("first_trial"):
        base = searches.get("base", {})
        lines.append("")
        lines.append(
            f"searches of {results['sizes']['search_model']} on mnist5k, B 0.5; base: "
            f"{base.get('log', '-')} ({base.get('wall_s', '-')} s)"
        )
        lines.append(
            f"{'study':<12} {'GPU/trial':>9} {'at once':>7} {'complete':>8} {'failed':>6} "
            f"{'screened':>8} {'first s':>7} {'trials/min':>10} {'wall s':>7} {'exit':>4}"
        )
        first = searches.get("first_trial")
        for name, r in [("first-trial", first)] if first else []:
            lines.append(_search_line(name, r))
        for r in searches.get("rows", []):
            lines.append(_search_line(f"gpu-{r['gpus_per_trial']:g}", r))
    for name, record in stages.items():
        if record.get("status") == "error":
            lines.append(f"stage {name} FAILED: {record['error']}")
    return "\n".join(lines)


def _search_line(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name:<12} {r['gpus_per_trial']:>9g} {r['trials_at_once']:>7} {r['complete']:>8} "
        f"{r['failed']:>6} {r['screened']:>8} {_cell(r['first_s']):>7} "
        f"{_cell(r['trials_per_min']):>10} {r['wall_s']:>7.0f} {_cell(r['exit_code']):>4}"
    )


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the log and JSON")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="seconds the whole run may take"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument(
        "--search-fractions",
        type=float,
        nargs="+",
        help="--gpus-per-trial values the searches stage runs (default 1 0.5 0.25)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["machine", "cuda_tests", "throughput", "autotune", "searches"],
        help="which stages to run",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray workers and the search subprocesses import autoprune from this tree, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
    )
    sizes = Sizes.dry_run() if args.dry_run else Sizes(device="cuda")
    if args.search_fractions:
        sizes.search_fractions = tuple(args.search_fractions)
    campaign = Campaign(args.out, args.budget_s)
    campaign.results.update(dry_run=args.dry_run, sizes=sizes.__dict__)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_campaign: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
            return 2
    stages: dict[str, Callable[[float], dict[str, Any]]] = {
        "machine": machine_logged(campaign),
        "cuda_tests": cuda_tests_stage(campaign, sizes.cuda_test_paths),
        "throughput": throughput_stage(sizes, campaign),
        "autotune": autotune_stage(sizes, campaign),
        "searches": searches_stage(sizes, campaign),
    }
    chosen = [s for s in stages if s in args.stages]
    total_share = sum(sizes.shares.get(s, 0) for s in chosen) or 1.0
    for i, name in enumerate(chosen):
        # a stage's share of what is left, so time one stage leaves goes to the next ones
        rest = sum(sizes.shares.get(s, 0) for s in chosen[i:]) or total_share
        share = sizes.shares.get(name, 0) / rest if name != "machine" else 0
        seconds = 60.0 if name == "machine" else campaign.left() * share
        campaign.stage(name, stages[name], seconds)
    table = final_table(campaign.results)
    campaign.log("\n" + table)
    (args.out / "table.txt").write_text(table + "\n")
    return 0 if all(r["status"] == "ok" for r in campaign.results["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
