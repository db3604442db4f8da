"""The GPU data path on any device: precision, float32 evaluation, the tensor loader.

Everything here runs on the CPU (CI has no GPU); the tests marked ``cuda`` repeat the
device-specific parts on a GPU and are skipped without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from autoprune import data, models
from autoprune.config import SearchConfig
from autoprune.data import Augment, Loader, PixelSplit, TensorSplit, batches
from autoprune.data.splits import crop_flip
from autoprune.errors import UserError
from autoprune.train import (
    Retrain,
    TrainConfig,
    _MixedPrecision,
    evaluate,
    fit,
    recalibrate_batchnorm,
    resolve_precision,
)

CPU = torch.device("cpu")


def needs_cuda(test: Any) -> Any:
    """Marked ``cuda`` (``pytest -m cuda`` selects them: benchmarks/gpu_campaign.py) and skipped
    without a CUDA GPU."""
    skip = pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (CI and this machine have none)"
    )
    return pytest.mark.cuda(skip(test))


def digits(n: int = 64, seed: int = 0) -> TensorSplit:
    generator = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randn(n, 1, 28, 28, generator=generator), torch.arange(n) % 10)


def pixels(n: int = 48, seed: int = 0, augment: Augment | None = None) -> PixelSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    return PixelSplit(images, torch.arange(n) % 10, mean, std, augment)


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20", num_classes=10, in_channels=1)


class DtypeProbe:
    """Records the input and output dtypes of the model's first convolution (in train mode only,
    with ``training``: a fit's own eval-mode probe of the memory layout is not a training step)."""

    def __init__(self, model: nn.Module, training: bool = False) -> None:
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []
        self.training = training
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training or not self.training:
            self.seen.append((inputs[0].dtype, output.dtype))

    def take(self) -> set[tuple[torch.dtype, torch.dtype]]:
        seen, self.seen = set(self.seen), []
        return seen


# --------------------------------------------------------------------------- precision


def test_evaluation_is_float32_whatever_autocast_the_fine_tune_used() -> None:
    """Acceptance check 2: val accuracy no longer depends on the fine-tune's (device's) precision."""
    model, split = small_resnet(), digits()
    probe = DtypeProbe(model, training=True)
    config = TrainConfig(Retrain(epochs=1, lr=0.01), batch_size=16, precision="bf16")
    fit(model, split, config, CPU)
    assert probe.take() == {(torch.float32, torch.bfloat16)}, "the fine-tune ran under bf16"
    probe.training = False

    result = evaluate(model, split, CPU, batch_size=20)
    assert probe.take() == {(torch.float32, torch.float32)}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast
        again = evaluate(model, split, CPU, batch_size=20)
    assert probe.take() == {(torch.float32, torch.float32)}
    assert again == result

    with torch.no_grad():  # what a plain float32 forward measures
        logits = model.eval()(split.images)
    assert result.accuracy == (logits.argmax(1) == split.labels).float().mean().item()
    assert result.loss == pytest.approx(F.cross_entropy(logits, split.labels).item(), rel=1e-6)
    assert result.samples == len(split)


def test_batchnorm_recalibration_is_float32_inside_autocast() -> None:
    model = small_resnet()
    probe = DtypeProbe(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recalibrate_batchnorm(model, digits(), CPU, num_batches=2, batch_size=16)
    assert probe.take() == {(torch.float32, torch.float32)}
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.running_mean.dtype == torch.float32 and torch.isfinite(bn.running_var).all()


def test_auto_precision_is_plain_float32_on_the_cpu() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    trained = []
    for precision in ("auto", "fp32"):
        model = small_resnet()
        config = TrainConfig(Retrain(epochs=1, lr=0.01), batch_size=16, precision=precision)
        fit(model, digits(), config, CPU)
        trained.append(model.state_dict())
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])


def test_fp16_off_cuda_and_unknown_precisions_are_user_errors() -> None:
    config = TrainConfig(Retrain(epochs=1, lr=0.01), batch_size=16, precision="fp16")
    with pytest.raises(UserError, match=r"fp16 needs a CUDA device.*--precision fp32"):
        fit(small_resnet(), digits(), config, CPU)
    with pytest.raises(UserError, match=r"--precision 'fp8' is unknown; allowed: auto, fp32"):
        resolve_precision("fp8", CPU)
    with pytest.raises(UserError, match="fp16 needs a CUDA device, but --device is cpu"):
        SearchConfig(precision="fp16", device="cpu").validate()
    with pytest.raises(UserError, match="--precision 'half' is unknown"):
        SearchConfig(precision="half").validate()
    with pytest.raises(UserError, match="--loader-workers -1 must be >= 0"):
        SearchConfig(loader_workers=-1).validate()


def test_fp16_loss_scaling_skips_a_step_whose_gradients_overflow() -> None:
    """The GradScaler path (pre-Ampere GPUs): an overflow skips the step and halves the scale."""
    try:
        amp = _MixedPrecision("fp16", CPU)  # the CPU scaler, so this runs without CUDA
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - older torch
        pytest.skip(f"this torch has no CPU GradScaler ({exc}); the CUDA test covers fp16")
    layer = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scale = amp.scaler.get_scale()
    before = layer.weight.detach().clone()
    amp.step(layer(torch.full((2, 4), float("inf"))).sum(), optimizer)
    assert torch.equal(layer.weight, before), "an overflowing step must not touch the weights"
    assert amp.scaler.get_scale() == scale / 2
    amp.step(layer(torch.ones(2, 4)).sum(), optimizer)
    # the scaled gradient was unscaled before the step: a plain SGD step of lr * grad
    assert torch.allclose(layer.weight, before - 0.1 * 2 * torch.ones(1, 4))


# --------------------------------------------------------------------------- tensor loader


def _record_layouts(model: nn.Module, training: bool = True) -> list[bool]:
    """Whether each input of the model's first BatchNorm (in train or in eval mode) was
    channels-last; the probe forward that decides the layout runs in eval mode. (A BatchNorm's
    input has several channels: a one-channel image is both layouts at once.)"""
    seen: list[bool] = []

    def record(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if m.training == training:
            x = args[0]
            seen.append(
                x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            )

    next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).register_forward_pre_hook(
        record
    )
    return seen


def channels_last_run(device: torch.device, precision: str) -> tuple[nn.Module, list[bool]]:
    """A fit in channels-last memory, recording whether each training input was channels-last."""
    model, split = small_resnet(), digits(64)
    seen = _record_layouts(model)
    config = TrainConfig(
        Retrain(epochs=1, lr=0.01), batch_size=16, precision=precision, channels_last=True
    )
    fit(model, split, config, device)
    return model, seen


def test_channels_last_trains_in_nhwc_and_hands_the_model_back_contiguous() -> None:
    model, seen = channels_last_run(CPU, "fp32")
    assert seen and all(seen), "every training batch went in channels-last"
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert all(w.is_contiguous() for w in weights), "pruning and saving get the default layout"
    plain = small_resnet()
    config = TrainConfig(Retrain(epochs=1, lr=0.01), batch_size=16, channels_last=False)
    fit(plain, digits(64), config, CPU)
    # NHWC kernels round differently; four SGD steps amplify that to ~1e-3 at most
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-2), "the layout changes no result beyond rounding"


class FlattensByView(nn.Module):
    """A user's network that flattens a feature map with ``view``: NHWC strides cannot take it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


def test_a_model_that_cannot_run_channels_last_trains_and_evaluates_in_the_default_layout() -> None:
    torch.manual_seed(0)
    model = FlattensByView()
    model.to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="view"):  # what the layout would do to it
        model(torch.randn(2, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    model.to(memory_format=torch.contiguous_format)
    seen = _record_layouts(model)
    fit(model, digits(64), TrainConfig(Retrain(epochs=1, lr=0.01), batch_size=16), CPU)
    recalibrate_batchnorm(model, digits(64), CPU, num_batches=2, batch_size=16)
    assert seen and not any(seen)
    assert 0.0 <= evaluate(model, digits(32, seed=1), CPU).accuracy <= 1.0
    assert model.conv.weight.is_contiguous()


def test_evaluation_and_recalibration_run_channels_last_and_change_nothing_but_rounding() -> None:
    model, split = small_resnet(), digits(64)
    seen = _record_layouts(model, training=False)
    nhwc = evaluate(model, split, CPU)
    assert seen and all(seen[1:]), "after the probe, every batch went in channels-last"
    assert all(p.is_contiguous() for p in model.parameters()), "handed back in the default layout"
    trained = _record_layouts(model)
    recalibrate_batchnorm(model, digits(64, seed=2), CPU, num_batches=2, batch_size=16)
    assert trained and all(trained)
    stats = [b.running_mean.clone() for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    model.to(memory_format=torch.channels_last)  # an evaluation inside a fit keeps its layout
    assert evaluate(model, split, CPU).samples == 64
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    plain = small_resnet()
    recalibrate_batchnorm(plain, digits(64, seed=2), CPU, num_batches=2, batch_size=16)
    with torch.no_grad():  # the same statistics and loss in the default layout, up to rounding
        for a, b in zip(
            stats,
            [b.running_mean for b in plain.modules() if isinstance(b, nn.BatchNorm2d)],
            strict=True,
        ):
            assert torch.allclose(a, b, atol=1e-4)
    before = small_resnet().eval()
    assert abs(nhwc.loss - F.cross_entropy(before(split.images), split.labels).item()) < 1e-4


def test_crop_flip_is_torchvisions_random_crop_then_flip() -> None:
    """Same augmentation semantics as CIFAR's RandomCrop(32, padding=4) + RandomHorizontalFlip."""
    from torchvision.transforms import functional as TF

    batch = pixels(8).pixels
    top = torch.tensor([0, 8, 4, 3, 0, 8, 1, 7])
    left = torch.tensor([0, 8, 4, 5, 8, 0, 2, 6])
    flip = torch.tensor([False, True, False, True, True, False, True, False])
    out = crop_flip(batch, 4, top, left, flip)
    for k in range(8):
        expected = TF.crop(TF.pad(batch[k], [4], fill=0), int(top[k]), int(left[k]), 32, 32)
        if flip[k]:
            expected = TF.hflip(expected)
        assert torch.equal(out[k], expected), k


def test_augmented_batches_are_seeded_and_differ_between_epochs() -> None:
    split = pixels(40, augment=Augment(pad=4, hflip=True))

    def epoch(seed: int, e: int) -> list[torch.Tensor]:
        return [x for x, _ in Loader(split, 16, shuffle=True, seed=seed).epoch(e)]

    first = epoch(0, 0)
    assert [x.shape for x in first] == [(16, 3, 32, 32), (16, 3, 32, 32), (8, 3, 32, 32)]
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0, 0), strict=True))
    assert not torch.equal(first[0], epoch(0, 1)[0])
    assert not torch.equal(first[0], epoch(1, 0)[0])
    # padding shows up as pixels of value 0 before normalisation: some images were shifted
    black = -torch.tensor(split.mean).view(3, 1, 1) / torch.tensor(split.std).view(3, 1, 1)
    assert any((x[:, :, 0, :] == black[:, :, 0][None]).all(1).any() for x in first)


def test_unaugmented_pixels_come_out_as_totensor_and_normalize_make_them() -> None:
    from torchvision import transforms

    split = pixels(10)
    transform = transforms.Normalize(split.mean, split.std)
    (images, labels), *_ = batches(split, 10)
    for k in range(10):
        expected = transform(transforms.ToTensor()(split.pixels[k].permute(1, 2, 0).numpy()))
        assert torch.equal(images[k], expected)
    assert torch.equal(labels, split.labels)


class Plain(Dataset):
    """A split the tensor loader does not know: it goes through a DataLoader."""

    def __init__(self, split: TensorSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.split[index]


def _labels(batches_: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    return torch.cat([y for _, y in batches_]).tolist()


@pytest.mark.parametrize("workers", [0, 1])
def test_dataloader_and_tensor_paths_shuffle_alike_every_epoch(workers: int) -> None:
    split = TensorSplit(torch.randn(30, 1, 4, 4), torch.arange(30))
    tensor_path = Loader(split, 8, shuffle=True, seed=3)
    loader_path = Loader(Plain(split), 8, shuffle=True, seed=3, num_workers=workers)
    if workers:
        assert loader_path._loader is not None and loader_path._loader.persistent_workers
    for e in range(2):  # the same workers serve both epochs
        assert _labels(loader_path.epoch(e)) == _labels(tensor_path.epoch(e))
    assert _labels(tensor_path.epoch(0)) != _labels(tensor_path.epoch(1))
    assert sorted(_labels(tensor_path.epoch(1))) == list(range(30))


def test_a_subset_of_an_in_memory_split_takes_the_tensor_path() -> None:
    split = TensorSplit(torch.randn(50, 1, 4, 4), torch.arange(50))
    subset = Subset(split, [7, 3, 41, 0, 9])
    loader = Loader(subset, 2)
    assert loader._loader is None and loader.on_device
    images = torch.cat([x for x, _ in loader.epoch(0)])
    assert torch.equal(images, split.images[[7, 3, 41, 0, 9]])
    nested = Subset(Subset(split, list(range(10, 20))), [9, 0])
    assert _labels(Loader(nested, 4).epoch(0)) == [19, 10]


def test_data_path_options_reach_the_search_config() -> None:
    from autoprune.cli.parser import build_parser
    from autoprune.cli.verbs import _search_config

    args = build_parser().parse_args(["search", "--precision", "bf16", "--loader-workers", "3"])
    config = _search_config(args)
    assert isinstance(config, SearchConfig)
    assert (config.precision, config.loader_workers, config.trial_loader_workers()) == (
        "bf16",
        3,
        3,
    )
    restored = SearchConfig.from_dict(config.to_dict())  # what resume reads from the study
    assert (restored.precision, restored.loader_workers) == ("bf16", 3)
    unset = _search_config(build_parser().parse_args(["search"]))
    assert (unset.precision, unset.loader_workers) == ("auto", None)  # type: ignore[attr-defined]
    workers = [SearchConfig(cpus_per_trial=c).trial_loader_workers() for c in (1, 2, 4, 32)]
    assert workers == [0, 1, 3, 8]  # one CPU per trial (the default) keeps the loop in-process


def test_cifar_training_split_is_augmented_pixels(cifar10_root: Any) -> None:
    splits = data.create("cifar10", root=cifar10_root)
    assert isinstance(splits.train, PixelSplit) and splits.train.augment == Augment(4, True)
    assert isinstance(splits.val, PixelSplit) and splits.val.augment is None
    assert isinstance(splits.calibration, PixelSplit) and splits.calibration.augment is None


# --------------------------------------------------------------------------- on a GPU


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fit_on_cuda_at_each_precision_measures_like_the_cpu(precision: str) -> None:
    cuda = torch.device("cuda")
    model, split = small_resnet(), digits(128)
    probe = DtypeProbe(model)
    config = TrainConfig(Retrain(epochs=2, lr=0.02), batch_size=32, precision=precision)
    fit(model, split, config, cuda)
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert {out for _, out in probe.take()} == {expected}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    on_gpu = evaluate(model, split, cuda)
    assert probe.take() == {(torch.float32, torch.float32)}
    on_cpu = evaluate(model.cpu(), split, CPU)
    assert on_gpu.accuracy == pytest.approx(on_cpu.accuracy, abs=1 / len(split))
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-3)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_on_cuda_trains_in_nhwc(precision: str) -> None:
    model, seen = channels_last_run(torch.device("cuda"), precision)
    assert seen and all(seen)
    assert all(p.is_contiguous() and torch.isfinite(p).all() for p in model.parameters())


@needs_cuda
def test_auto_precision_on_cuda_is_bf16_where_native_else_fp16() -> None:
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if native else "fp16")


@needs_cuda
def test_tensor_loader_on_cuda_keeps_the_split_there_and_matches_the_cpu() -> None:
    cuda = torch.device("cuda")
    split = pixels(40, augment=Augment(pad=4, hflip=True))
    loader = Loader(split, 16, shuffle=True, seed=5, device=cuda)
    assert loader.on_device
    on_gpu = list(loader.epoch(2))
    on_cpu = list(Loader(split, 16, shuffle=True, seed=5).epoch(2))
    for (xg, yg), (xc, yc) in zip(on_gpu, on_cpu, strict=True):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        assert torch.equal(yg.cpu(), yc)
        assert torch.allclose(xg.cpu(), xc, atol=1e-6)


@needs_cuda
def test_a_split_too_big_for_the_gpu_is_copied_batch_by_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autoprune.data import loader as loader_module

    monkeypatch.setattr(loader_module, "RESIDENT_MAX_BYTES", 1024)
    split = pixels(40)
    loader = Loader(split, 16, device="cuda")
    assert not loader.on_device
    images = torch.cat([x for x, _ in loader.epoch(0)])
    assert images.device.type == "cuda"
    assert torch.allclose(images.cpu(), split.take(torch.arange(40))[0], atol=1e-6)
    assert split not in loader_module._RESIDENT


@needs_cuda
def test_the_dataloader_path_pins_memory_for_cuda() -> None:
    loader = Loader(Plain(digits(20)), 8, device="cuda")
    assert loader._loader is not None and loader._loader.pin_memory
    assert all(x.device.type == "cuda" for x, _ in loader.epoch(0))
