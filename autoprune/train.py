"""Training: the fit and evaluate loops that run a Retrain recipe (`autoprune.policy`), BN recalibration.

One loop serves base training (``autoprune train``), the short fine-tune of every search trial
and the longer fine-tune of ``replay``. Epochs may be fractional (``0.5`` = half an epoch of
steps) so a search can spend less than an epoch per candidate.

Precision (:data:`PRECISIONS`): the fine-tune runs under autocast in bf16, fp16 (with a
``GradScaler``) or not at all (fp32); ``auto`` is bf16 on GPUs that have it natively (Ampere
and later), fp16 on older GPUs and fp32 on the CPU. :func:`evaluate` and
:func:`recalibrate_batchnorm` always run in float32, whatever the fine-tune used, so a trial's
measured accuracy does not depend on the device it ran on.

Memory layout (:class:`ChannelsLast`): training, evaluation and BatchNorm re-estimation run the
model in channels-last memory (NHWC) wherever its forward pass works that way, and hand it back
in the default layout. On the CPU a pruned ResNet-20's training step is about 1.4x as fast and
its evaluation 1.1x (one core, batch 128 and 256); on an H200 four ResNet-56 trials per GPU
gained 40-70% (``benchmarks/gpu_campaign.py``). A model whose forward cannot take it (a
``view`` of a feature map, say) is left in the default layout.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from autoprune.data import Loader, batches
from autoprune.errors import UserError
from autoprune.groups import BATCH_NORMS
from autoprune.logs import Log
from autoprune.policy import Distill, Retrain

# Autocast precision of the fine-tune; "auto": bf16 (or fp16 before Ampere) on CUDA, fp32 else.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Training steps between checks that the loss is finite on a GPU (each check waits for it); on
# the CPU the check costs nothing and runs every step, so a diverged fine-tune stops at once.
_FINITE_CHECK_STEPS = 25


@dataclass
class TrainConfig:
    """How :func:`fit` runs a recipe: the recipe plus loop settings that no policy carries."""

    # the recipe: epochs, lr, optimizer, schedule, regulariser
    retrain: Retrain = field(default_factory=Retrain)
    batch_size: int = 128  # images per step
    weight_decay: float = 5e-4  # L2 penalty on all parameters
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    num_workers: int = 0  # DataLoader workers for datasets that decode images
    precision: str = "auto"  # autocast of the training steps: auto | fp32 | bf16 | fp16
    # train in channels-last memory (NHWC) when the model's forward runs that way (see
    # :class:`ChannelsLast`); the model is handed back in the default layout
    channels_last: bool = True
    # linear learning-rate warm-up from lr/warmup_steps to lr over this many first steps (0:
    # none); training from scratch needs it for deep networks (ResNet-56 diverges without)
    warmup_steps: int = 0
    # cuDNN autotuning (torch.backends.cudnn.benchmark) around the training steps, on CUDA
    cudnn_benchmark: bool = True


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite, almost always from a too high learning rate.

    A :class:`UserError` so the CLI reports it in one line (exit 2) and a search records the
    trial as failed with this message; still a ``FloatingPointError`` for callers that catch it.
    """


@dataclass
class EvalResult:
    accuracy: float  # top-1 in [0, 1]
    loss: float  # mean cross-entropy
    samples: int  # how many images were evaluated


class ChannelsLast:
    """Channels-last memory (NHWC) for a model's forward passes, where the model runs that way.

    Used as a context around a loop over batches: the first batch passed through the instance
    decides (a 4-D batch, and a probe forward of two of its images in eval mode that raises no
    error: a ``view`` of a feature map cannot take NHWC strides); from then on the model is in
    channels-last memory and every batch is converted. On exit the model is handed back in the
    default layout, unless it came in channels-last (an evaluation inside a fit). Numerically it
    is the same convolution in another order of summation.
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.on: bool | None = None if enabled else False  # None: not decided yet
        self.came_in = _is_channels_last(model)

    def __enter__(self) -> ChannelsLast:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on and not self.came_in:
            self.model.to(memory_format=torch.contiguous_format)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the layout the model runs in (deciding it on the first batch)."""
        if self.on is None:
            self.on = images.dim() == 4 and self._forwards(images[:2])
        return images.contiguous(memory_format=torch.channels_last) if self.on else images

    def _forwards(self, sample: torch.Tensor) -> bool:
        model, training = self.model, self.model.training
        model.to(memory_format=torch.channels_last)
        model.eval()  # no BatchNorm statistic moves
        try:
            with torch.no_grad(), torch.autocast(sample.device.type, enabled=False):
                model(sample.float().contiguous(memory_format=torch.channels_last))
            return True
        except RuntimeError:
            model.to(memory_format=torch.contiguous_format)
            return False
        finally:
            model.train(training)


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are in channels-last memory (the first one whose two
    layouts differ decides; a 1x1 convolution over one channel looks like both)."""
    for p in model.parameters():
        if p.dim() == 4 and p.is_contiguous() != p.is_contiguous(memory_format=torch.channels_last):
            return p.is_contiguous(memory_format=torch.channels_last)
    return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable on the same machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; any torch device string is accepted."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(
            f"device '{name}' is not a torch device: use auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device '{name}' was requested but CUDA is not available: use --device cpu"
        )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``fit`` runs at on ``device``: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` keeps what a GPU does well: bf16 where the GPU computes it natively (Ampere and
    later), else fp16 with a ``GradScaler`` (bf16 would be emulated, slowly); fp32 on the CPU.

    Raises:
        UserError: an unknown name, or fp16 off CUDA (autocast in fp16 on a CPU is slower than
            fp32 there and buys nothing: use fp32, or bf16).
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision '{precision}' is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"--precision fp16 needs a CUDA device, but this runs on {device.type}: fp16 autocast "
            "there is slower than fp32; use --precision fp32 (or bf16), or --device cuda"
        )
    return precision


class _MixedPrecision:
    """Autocast and loss scaling of one training run at a resolved precision.

    fp16 scales the loss (``torch.amp.GradScaler``) so small gradients do not underflow, and
    skips the steps whose gradients overflow; bf16 and fp32 need no scaling (the scaler is off
    and ``step`` is a plain backward + optimiser step).
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.device_type = device.type
        self.dtype = _AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """cuDNN autotuning for the fixed-shape training steps, on CUDA, restored afterwards.

    Only around training: the algorithms it picks may differ between runs, and channel
    scoring (which must choose the same channels every time) should not depend on them.
    """
    if device.type != "cuda" or not enabled:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over 3x3 convolutions of ||W W^T - I||_F^2 with W the (out, in*9) filter matrix.

    Filters are L2-normalised first, so the term measures only their mutual correlation
    (the class-aware pruning paper's regulariser); it pushes filters to carry distinct features.
    """
    terms = []
    for module in model.modules():
        if (
            isinstance(module, nn.Conv2d)
            and tuple(module.kernel_size) == (3, 3)
            and module.groups == 1
        ):
            w = module.weight.flatten(1)
            w = w / (w.norm(dim=1, keepdim=True) + 1e-8)
            gram = w @ w.t()
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            terms.append(((gram - eye) ** 2).sum())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    distill: Distill,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``(1 - a) * CE + a * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The ``T^2`` keeps the soft term's gradients on the scale of the hard term's whatever ``T``
    (Hinton et al.); at ``alpha`` 0 this is exactly the cross-entropy.
    """
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if not distill.on:
        return hard
    t = distill.temperature
    soft = F.kl_div(
        F.log_softmax(logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - distill.alpha) * hard + distill.alpha * t * t * soft


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    if schedule == "step":
        return 0.01 if step >= 0.75 * total else 0.1 if step >= 0.5 * total else 1.0
    return 1.0


def learning_rate(recipe: Retrain, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate of training step ``step`` (from 0) of ``total_steps``.

    The recipe's schedule, times a linear warm-up over the first ``warmup_steps`` steps that
    starts at ``1 / warmup_steps`` of it and reaches it at step ``warmup_steps - 1``.
    """
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return recipe.lr * _lr_factor(recipe.schedule, step, total_steps) * warmup


def fit(
    model: nn.Module,
    train: Dataset,
    config: TrainConfig,
    device: torch.device,
    seed: int = 0,
    log: Log | None = None,
    val: Dataset | None = None,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``config.retrain.epochs`` (fractional) epochs and return it.

    Args:
        model: the network; moved to ``device``.
        train: the training split (augmentation is part of the dataset).
        config: the recipe (optimiser, schedule, regulariser) and loop settings.
        device: where to train.
        seed: seeds the shuffling order and torch's RNG, for repeatable runs.
        log: called with one line per epoch (loss, accuracy, optional val accuracy, time).
        val: evaluated after every full epoch when given (only for the log line).
        teacher: the network distilled from when the recipe asks for it (``retrain.distill``);
            run in eval mode without gradients on every training batch, never changed.

    Raises:
        ValueError: the recipe distils but no teacher was given (a caller's bug).
    """
    recipe = config.retrain
    recipe.validate()
    if recipe.distill.on and teacher is None:
        raise ValueError("retrain.distill.alpha > 0 needs the teacher (the unpruned base)")
    if teacher is not None and recipe.distill.on:
        teacher.to(device).eval()
    else:
        teacher = None
    model.to(device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)  # type: ignore[arg-type]
    total_steps = math.ceil(recipe.epochs * steps_per_epoch)
    if total_steps == 0:
        return model
    seed_everything(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=config.weight_decay)
    precision = _MixedPrecision(resolve_precision(config.precision, device), device)
    loader = Loader(
        train,
        config.batch_size,
        shuffle=True,
        seed=seed,
        num_workers=config.num_workers,
        device=device,
    )
    model.train()
    step, epoch = 0, 0
    with (
        _cudnn_benchmark(device, config.cudnn_benchmark),
        ChannelsLast(model, config.channels_last) as layout,
    ):
        while step < total_steps:
            start = time.perf_counter()
            seen = 0
            # Summed on the device: reading them every step would wait for the GPU every step.
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            for images, labels in loader.epoch(epoch):
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(recipe, step, total_steps, config.warmup_steps)
                images = layout(images)
                with precision.autocast():
                    logits = model(images)
                    if teacher is None:
                        loss = F.cross_entropy(
                            logits, labels, label_smoothing=config.label_smoothing
                        )
                    else:
                        with torch.no_grad():
                            taught = teacher(images)
                        loss = distillation_loss(
                            logits, labels, taught, recipe.distill, config.label_smoothing
                        )
                if recipe.regularizer == "orthogonal":
                    loss = loss + recipe.regularizer_weight * orthogonality_penalty(model)
                precision.step(loss, optimizer)
                step += 1
                seen += len(labels)
                loss_sum += loss.detach().float() * len(labels)
                correct += (logits.detach().argmax(1) == labels).sum()
                if device.type != "cuda" or step % _FINITE_CHECK_STEPS == 0:
                    _check_finite(loss_sum, step, total_steps, recipe.lr)
            epoch += 1
            if seen:
                _check_finite(loss_sum, step, total_steps, recipe.lr)
            if log is not None and seen:
                line = (
                    f"epoch {epoch}/{math.ceil(recipe.epochs)}  loss {float(loss_sum) / seen:.4f}  "
                    f"train acc {int(correct) / seen:.4f}"
                )
                if val is not None:
                    line += f"  val acc {evaluate(model, val, device).accuracy:.4f}"
                    model.train()
                log(line + f"  ({time.perf_counter() - start:.1f}s)")
    model.eval()
    return model


def finetune_pruned(
    model: nn.Module,
    train: Dataset,
    calibration: Dataset,
    config: TrainConfig,
    device: torch.device,
    seed: int = 0,
    teacher: nn.Module | None = None,
    bn_batches: int = 8,
    log: Log | None = None,
) -> nn.Module:
    """Fine-tune a freshly pruned model with :func:`fit`, ending on re-estimated BatchNorm statistics.

    Pruning leaves every BatchNorm holding the base's statistics for channels that now see
    other inputs. :func:`fit` updates them by an exponential average (momentum 0.1), so a short
    fine-tune of a few dozen steps would end with part of the base's stale statistics still in
    them, and measure below the adaptive-BN figure it started from. So the statistics are
    re-estimated on ``bn_batches`` calibration batches after the last step (they match the
    final weights). ``teacher`` is the unpruned base when the recipe distils; ``bn_batches`` 0
    skips the re-estimate.

    No estimate is made before the first step: in train mode a BatchNorm normalises with each
    batch's own statistics, so the running ones it starts from never reach the weights, and the
    estimate after the last step replaces them (the weights and statistics come out bit for bit
    as with an estimate before; ``tests/test_finetune.py``). A model that keeps a BatchNorm in
    eval mode while training (frozen statistics) does train on them, and gets one before too.
    """
    if bn_batches > 0 and (config.retrain.epochs <= 0 or _trains_on_running_statistics(model)):
        recalibrate_batchnorm(model, calibration, device, num_batches=bn_batches)
    fit(model, train, config, device, seed=seed, log=log, teacher=teacher)
    if bn_batches > 0 and config.retrain.epochs > 0:
        recalibrate_batchnorm(model, calibration, device, num_batches=bn_batches)
    return model


def _trains_on_running_statistics(model: nn.Module) -> bool:
    """Whether a BatchNorm of ``model`` normalises with its running statistics in training: one
    that stays in eval mode when the model is put in train mode (as :func:`fit` does)."""
    model.train()
    return any(
        isinstance(m, BATCH_NORMS) and m.track_running_stats and not m.training
        for m in model.modules()
    )


def _check_finite(loss_sum: torch.Tensor, step: int, total_steps: int, lr: float) -> None:
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(
            f"training loss became {float(loss_sum)} by step {step} of {total_steps} with "
            f"learning rate {lr:g}: lower the learning rate"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 500
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode).

    Always in float32, also inside an autocast region and whatever precision the model was
    fine-tuned at, so the same weights measure the same on every device.
    """
    model.to(device)
    model.eval()
    seen = 0
    losses: list[torch.Tensor] = []  # per batch, read once at the end (no wait per batch)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.autocast(device.type, enabled=False), ChannelsLast(model) as layout:
        for images, labels in batches(dataset, batch_size, device=device):
            logits = model(layout(images.float()))
            losses.append(F.cross_entropy(logits, labels, reduction="sum"))
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
    if seen == 0:
        raise UserError(
            "the evaluation split is empty: the dataset has too few images for a val/test split"
        )
    loss_sum = float(torch.stack(losses).cpu().double().sum())
    return EvalResult(accuracy=int(correct) / seen, loss=loss_sum / seen, samples=seen)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    num_batches: int = 8,
    batch_size: int = 128,
) -> None:
    """Re-estimate BatchNorm running statistics on a few training batches (no gradient step).

    Pruning changes the statistics that follow a pruned layer; a cheap re-estimate recovers much
    of the accuracy when a policy asks for no fine-tuning.
    """
    bns = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.to(device)
    model.train()
    # float32 statistics, as evaluate uses
    with torch.autocast(device.type, enabled=False), ChannelsLast(model) as layout:
        for i, (images, _) in enumerate(
            batches(dataset, batch_size, shuffle=True, seed=0, device=device)
        ):
            if i >= num_batches:
                break
            model(layout(images.float()))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
