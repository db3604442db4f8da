"""Search configuration: everything ``autoprune search`` needs, stored on the study for resume."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from autoprune.errors import UserError
from autoprune.sampler import SAMPLERS

EXECUTORS = ("ray", "local")
# Fine-tuned trials at the budget the proxy's ranking is measured on before --screen-floor can
# pause screening (the six default baselines, say): fewer, and screening stays on.
SCREEN_EVIDENCE = 6
BASELINES = ("default", "all", "none")
# What the search trades val accuracy against: the study's second (and third) objective.
OBJECTIVES = {
    "macs": ["val_accuracy", "macs_ratio"],
    "latency": ["val_accuracy", "latency_ratio"],
    "both": ["val_accuracy", "macs_ratio", "latency_ratio"],
}
LATENCY_RUNTIMES = ("torch", "onnxruntime")
Direction = Literal["maximize", "minimize"]


def directions_for(objective: str) -> list[Direction]:
    """Optuna's directions of an objective's metrics: maximize val accuracy, minimize every
    ratio it is traded against."""
    minimize: list[Direction] = ["minimize"]
    return ["maximize", *minimize * (len(OBJECTIVES[objective]) - 1)]


def front_metric_of(objective: str) -> str:
    """The ratio an objective's budget bounds, its front is ordered by and its winner picked by."""
    return "latency_ratio" if objective == "latency" else "macs_ratio"


@dataclass
class SearchConfig:
    """One search. Stored as the study's user attr ``autoprune.config`` so ``resume NAME`` works."""

    budget_flops: float = 0.5  # upper bound on the pruned/base MACs ratio (the constraint)
    model: str = "resnet20"  # model registry name of the base checkpoint's architecture
    dataset: str = "mnist5k"  # dataset registry name
    data_root: str | None = None  # dataset folder (cifar10/cifar100)
    image_size: int | None = None  # imagefolder: side images are resized to; None: the base's size
    base_checkpoint: str | None = None  # None: the cached embedded default (trained on first use)
    space: str = "default"  # a bundled search space's name (`autoprune spaces`) or a YAML path
    trials: int = 20  # the study's total of COMPLETE (fine-tuned) trials, baselines included
    sampler: str = "tpe"  # tpe | nsga2 | gp | random
    seed: int = 0  # sampler seed (and policy seed)
    executor: str = "ray"  # ray (Ray Tune) | local (Optuna's own loop, no Ray)
    max_concurrent: int = 2  # trials evaluated at once
    cpus_per_trial: float = 1.0  # Ray resources per trial; also torch threads per trial
    gpus_per_trial: float = 0.0  # fractions allowed (0.25 = four trials per GPU)
    ray_address: str | None = None  # join an existing cluster ("auto" or host:port); None: local
    storage: str | None = None  # SQLAlchemy URL; None: sqlite:///<studies>/autoprune.db
    study: str | None = None  # study name; None: derived from model, dataset, space and budget
    device: str = "auto"  # device inside trial workers
    # fine-tune autocast: auto (bf16 on CUDA, fp16 + GradScaler before Ampere; fp32 on CPU),
    # fp32, bf16 or fp16 (CUDA only); evaluation is float32 whatever this says
    precision: str = "auto"
    # DataLoader workers per trial for datasets read from image files (in-memory datasets need
    # none); None: cpus_per_trial - 1, at most 8, so 0 with one CPU per trial
    loader_workers: int | None = None
    calibration_images: int = 256  # images data-driven criteria score on
    screen: int = 4  # candidates screened by the adaptive-BN proxy per fine-tuned trial (1: off)
    # screening pauses while the proxy's Spearman with fine-tuned val accuracy, measured on the
    # study's own trials at the budget (SCREEN_EVIDENCE of them at least), is below this: a
    # proxy that cannot rank there only costs time (-1: always screen)
    screen_floor: float = 0.3
    # successive halving over fine-tune length once the study is full: rung r fine-tunes the
    # best 1/eta of rung r-1's trials at the budget for eta**r times the epochs (1: no ladder)
    rungs: int = 1
    eta: int = 3
    baselines: str = "default"  # default | all | none: baseline trials enqueued first
    max_failures: int = 0  # Ray: times Tune re-runs a trial whose worker died (-1: no limit)
    # Ray: custom resources each trial also asks for, e.g. {"worker_node": 1} so trials run
    # only on nodes started with `ray start --resources '{"worker_node": N}'`; None: none
    resources_per_trial: dict[str, float] | None = None
    # macs | latency | both: what val accuracy is traded against (see OBJECTIVES). With
    # latency, the constraint is budget_latency and the front is by latency ratio.
    objective: str = "macs"
    # upper bound on the pruned/base median latency ratio (objective latency: required, default
    # 0.5; both: optional second constraint; macs: unused)
    budget_latency: float | None = None
    # the MACs ratio candidates are projected onto; None: budget_flops. With objective latency
    # it is calibrated once from budget_latency (measured latency of uniform prunings) and
    # stored, so a resume projects onto the same target.
    macs_target: float | None = None
    latency_batch_size: int = 1  # images per timed forward pass
    latency_repeats: int = 30  # timed forward passes; the median is the trial's latency
    latency_warmup: int = 5  # untimed forward passes first
    latency_runtime: str = "torch"  # torch (eager) | onnxruntime (needs the onnx extra)
    # round every pruned group's kept channels down to a multiple of this (1: any count);
    # 8 or 16 is what GPU/NPU kernels run fastest on
    channel_multiple: int = 1

    def metric_names(self) -> list[str]:
        """The study's objectives, in order: val accuracy first, then what it is traded against."""
        return list(OBJECTIVES[self.objective])

    def budgets(self) -> dict[str, float]:
        """The constraints every feasible trial meets: metric name -> largest allowed ratio."""
        out: dict[str, float] = {}
        if self.objective in ("macs", "both"):
            out["macs_ratio"] = self.budget_flops
        if self.objective != "macs" and self.budget_latency is not None:
            out["latency_ratio"] = self.budget_latency
        return out

    def directions(self) -> list[Direction]:
        return directions_for(self.objective)

    def front_metric(self) -> str:
        """The ratio the front is drawn and the winner picked by (what the budget bounds)."""
        return front_metric_of(self.objective)

    def target(self) -> float:
        """The MACs ratio candidates at the budget are projected onto."""
        return self.macs_target if self.macs_target is not None else self.budget_flops

    def measures_latency(self) -> bool:
        return self.objective != "macs"

    def validate(self) -> None:
        if not 0.0 < self.budget_flops <= 1.0:
            raise UserError(
                f"--budget-flops {self.budget_flops} is outside (0, 1]: it is the pruned model's share of the base MACs, "
                "e.g. 0.5 for half"
            )
        if self.sampler not in SAMPLERS:
            raise UserError(
                f"--sampler '{self.sampler}' is unknown; allowed: {', '.join(SAMPLERS)}"
            )
        if self.executor not in EXECUTORS:
            raise UserError(
                f"--executor '{self.executor}' is unknown; allowed: {', '.join(EXECUTORS)}"
            )
        if self.trials < 1:
            raise UserError(f"--trials {self.trials} must be >= 1")
        if self.max_concurrent < 1:
            raise UserError(f"--max-concurrent {self.max_concurrent} must be >= 1")
        if self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial {self.cpus_per_trial} must be > 0")
        if self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial {self.gpus_per_trial} must be >= 0")
        self._validate_data_path()
        if not 1 <= self.screen <= 64:
            raise UserError(
                f"--screen {self.screen} must be in [1, 64]: candidates per fine-tuned trial (1 turns screening off)"
            )
        if not -1.0 <= self.screen_floor <= 1.0:
            raise UserError(
                f"--screen-floor {self.screen_floor} must be in [-1, 1]: the proxy's Spearman "
                "below which screening pauses (-1: always screen)"
            )
        if not 1 <= self.rungs <= 5:
            raise UserError(
                f"--rungs {self.rungs} must be in [1, 5]: fine-tune lengths candidates climb (1: no ladder)"
            )
        if not 2 <= self.eta <= 10:
            raise UserError(
                f"--eta {self.eta} must be in [2, 10]: each rung keeps 1/eta of the one below "
                "and fine-tunes eta times longer"
            )
        if self.baselines not in BASELINES:
            raise UserError(
                f"--baselines '{self.baselines}' is unknown; allowed: {', '.join(BASELINES)}"
            )
        if self.calibration_images < 1:
            raise UserError(f"--calibration-images {self.calibration_images} must be >= 1")
        if self.max_failures < -1:
            raise UserError(
                f"--max-failures {self.max_failures} must be >= 0 (or -1: retry without limit)"
            )
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"--image-size {self.image_size} must be >= 1 (pixels a side)")
        if self.resources_per_trial is not None:
            check_resources(self.resources_per_trial)
        self._validate_objective()

    def _validate_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(
                f"--objective '{self.objective}' is unknown; allowed: {', '.join(OBJECTIVES)}"
            )
        if self.objective == "latency" and self.budget_latency is None:
            self.budget_latency = 0.5
        if self.budget_latency is not None:
            if self.objective == "macs":
                raise UserError(
                    "--budget-latency bounds the latency ratio, which --objective macs does not "
                    "measure: add --objective latency (or both), or drop --budget-latency"
                )
            if not 0.0 < self.budget_latency <= 1.0:
                raise UserError(
                    f"--budget-latency {self.budget_latency} is outside (0, 1]: it is the pruned "
                    "model's share of the base model's median latency, e.g. 0.6"
                )
        if self.latency_batch_size < 1:
            raise UserError(f"--latency-batch-size {self.latency_batch_size} must be >= 1")
        if self.latency_repeats < 3:
            raise UserError(
                f"--latency-repeats {self.latency_repeats} must be >= 3 (the median of the "
                "timed runs is the latency)"
            )
        if self.latency_warmup < 0:
            raise UserError(f"--latency-warmup {self.latency_warmup} must be >= 0")
        if self.latency_runtime not in LATENCY_RUNTIMES:
            raise UserError(
                f"--latency-runtime '{self.latency_runtime}' is unknown; allowed: "
                f"{', '.join(LATENCY_RUNTIMES)}"
            )
        if not 1 <= self.channel_multiple <= 256:
            raise UserError(
                f"--channel-multiple {self.channel_multiple} must be in [1, 256] (e.g. 8): kept "
                "channels of every pruned group are rounded to a multiple of it"
            )

    def _validate_data_path(self) -> None:
        from autoprune.train import PRECISIONS

        if self.precision not in PRECISIONS:
            raise UserError(
                f"--precision '{self.precision}' is unknown; allowed: {', '.join(PRECISIONS)}"
            )
        if self.precision == "fp16" and self.device == "cpu":
            raise UserError(
                "--precision fp16 needs a CUDA device, but --device is cpu: use --precision fp32 "
                "(or bf16) on the CPU"
            )
        if self.loader_workers is not None and self.loader_workers < 0:
            raise UserError(f"--loader-workers {self.loader_workers} must be >= 0")

    def trial_loader_workers(self) -> int:
        """DataLoader workers of each trial: ``loader_workers``, or one per spare trial CPU."""
        if self.loader_workers is not None:
            return self.loader_workers
        return min(8, max(0, int(self.cpus_per_trial) - 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# Resources with options of their own; the rest of a Ray resource dict is custom resources.
_RESERVED_RESOURCES = {
    "cpu": "--cpus-per-trial sets it", "CPU": "--cpus-per-trial sets it",
    "gpu": "--gpus-per-trial sets it", "GPU": "--gpus-per-trial sets it",
    "memory": "it is not a custom resource", "custom_resources": "it is not a custom resource",
}  # fmt: skip


def parse_resources(text: str) -> dict[str, float]:
    """``--resources-per-trial`` JSON, e.g. ``'{"worker_node": 1}'``, checked."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--resources-per-trial '{text}' is not JSON ({exc.msg}): give an object such as "
            """'{"worker_node": 1}'"""
        ) from exc
    check_resources(raw)
    return {str(k): float(v) for k, v in raw.items()}


def check_resources(raw: Any) -> None:
    """Custom Ray resources per trial: an object of names to amounts >= 0."""
    example = """'{"worker_node": 1}'"""
    if not isinstance(raw, dict):
        raise UserError(
            f"--resources-per-trial must be a JSON object of resource names to amounts, e.g. {example}"
        )
    for name, amount in raw.items():
        if name in _RESERVED_RESOURCES:
            raise UserError(
                f"--resources-per-trial names '{name}' ({_RESERVED_RESOURCES[name]}): remove it "
                "and give only custom resources"
            )
        if (
            isinstance(amount, bool)
            or not isinstance(amount, (int, float))
            or not math.isfinite(amount)
            or amount < 0
        ):
            raise UserError(
                f"--resources-per-trial gives '{name}' the amount {amount!r}: amounts are numbers >= 0, "
                f"e.g. {example}"
            )
