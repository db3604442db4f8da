"""Pruned checkpoints: replay a policy into one (policy -> checkpoint), load one (-> model).

A pruned checkpoint never pickles modules. It is a plain dict that loads with
``torch.load(weights_only=True)``::

    {format, model: ModelSpec dict, policy: applied policy dict, pruning_history,
     state_dict, metrics, base_sha256, sha256}

``sha256`` hashes the state dict as a base checkpoint's does, so a file modified or damaged
after it was written is refused (files written before it was recorded load unchecked).

:func:`load_checkpoint` rebuilds the base architecture, drops the policy's blocks, replays
the pruning history with torch-pruning's ``load_pruning_history`` and loads the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.base import BaseCheckpoint, is_state_dict, load_base, state_dict_sha256
from autoprune.errors import UserError
from autoprune.evaluate import (
    ObjectiveConfig,
    base_macs_params,
    finetune,
    prune_policy,
    torch_threads,
)
from autoprune.files import read_torch_file, save_torch
from autoprune.modelspec import ModelSpec
from autoprune.policy import Policy
from autoprune.prune import replay_history
from autoprune.train import evaluate

CHECKPOINT_FORMAT = "autoprune.checkpoint/1"


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    history: list[list[Any]],
    policy: Policy,
    metrics: dict[str, float],
    base_sha256: str | None,
) -> Path:
    """Write a pruned checkpoint atomically."""
    path = Path(path)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": policy.model.to_dict(),
        "policy": policy.to_dict(),
        "pruning_history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history],
        "state_dict": state_dict,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "base_sha256": base_sha256,
        "sha256": state_dict_sha256(state_dict),
    }
    return save_torch(path, payload)


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # pruned architecture with the fine-tuned weights, eval mode
    policy: Policy
    metrics: dict[str, float]
    base_sha256: str | None
    history: list[list[Any]]


def load_checkpoint(path: str | Path, payload: Any = None) -> LoadedCheckpoint:
    """Rebuild a pruned model from a checkpoint written by :func:`save_checkpoint`.

    ``payload`` is the file's content when the caller has read it already.

    Raises:
        UserError: the file is missing, not a pruned autoprune checkpoint, damaged (its weights
            do not match their recorded sha256), or does not fit.
    """
    path = Path(path)
    fix = "give a file written by `autoprune replay`"
    if payload is None:
        payload = read_torch_file(path, "checkpoint", fix)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} is not a pruned autoprune checkpoint (expected format {CHECKPOINT_FORMAT}): {fix}"
        )
    if not (
        is_state_dict(payload.get("state_dict"))
        and isinstance(payload.get("model"), dict)
        and isinstance(payload.get("policy"), dict)
        and isinstance(payload.get("pruning_history"), list)
    ):
        raise UserError(
            f"checkpoint {path} is damaged: it lacks its model, policy, pruning history or "
            f"weights; re-create it: {fix}"
        )
    if "sha256" in payload and state_dict_sha256(payload["state_dict"]) != payload["sha256"]:
        raise UserError(
            f"checkpoint {path}: its weights do not match the sha256 recorded in it, so the file "
            f"was modified or damaged; re-create it: {fix}"
        )
    spec = ModelSpec.from_dict(payload["model"])
    policy = Policy.from_dict(payload["policy"], source=str(path))
    model = spec.build().eval()
    replay_history(model, policy, payload["pruning_history"], spec.example_inputs())
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise UserError(  # torch's text lists every mismatched tensor, over many lines
            f"checkpoint {path}: its weights do not fit the architecture its pruning history "
            f"rebuilds, so the file was modified or damaged; re-create it: {fix}"
        ) from exc
    return LoadedCheckpoint(
        model=model.eval(),
        policy=policy,
        metrics=dict(payload.get("metrics", {})),
        base_sha256=payload.get("base_sha256"),
        history=payload["pruning_history"],
    )


@dataclass
class ReplayResult:
    checkpoint: Path
    test_accuracy: float
    val_accuracy: float
    macs_ratio: float
    params_ratio: float
    policy: Policy
    program: Path | None = None  # the torch.export file (.pt2); None when it could not trace


def replay(
    policy: Policy,
    *,
    base_checkpoint: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    image_size: int | None = None,
    epochs: float | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    precision: str = "auto",
    loader_workers: int = 0,
    export_program_file: bool = True,
    log: Any = print,
) -> ReplayResult:
    """Apply ``policy`` to its base checkpoint, fine-tune, report test accuracy, save a checkpoint.

    The same code path as a search trial (:func:`autoprune.evaluate.prune_policy`); only the
    fine-tune is longer (default: the policy's retrain budget x 10) and the test split is
    evaluated as well. Beside the checkpoint goes a ``torch.export`` program (``.pt2``,
    :func:`autoprune.program.export_program`) unless ``export_program_file`` is off; a model
    that cannot be traced gets a log line instead. ``imagefolder:`` images are resized to the size the base checkpoint was
    trained at (its ``input_shape``); ``image_size`` may only repeat it. ``precision`` is the
    fine-tune's autocast (:data:`autoprune.train.PRECISIONS`); accuracy is measured in float32.
    """
    checkpoint = base_checkpoint or policy.base.checkpoint
    if not checkpoint:
        raise UserError(
            "the policy names no base checkpoint (base.checkpoint): pass --base-checkpoint"
        )
    base = load_base(checkpoint)
    dataset_name = dataset or base.dataset.get("name")
    if not dataset_name:
        raise UserError(f"base checkpoint {checkpoint} records no dataset: pass --dataset")
    config = ObjectiveConfig(
        base_checkpoint=str(checkpoint),
        dataset=dataset_name,
        data_root=data_root,
        image_size=image_size,
        device=device,
        threads=threads,
        precision=precision,
        num_workers=loader_workers,
    )
    with torch_threads(threads):
        return _replay(policy, base, config, checkpoint, epochs, out, export_program_file, log)


def _replay(
    policy: Policy,
    base: BaseCheckpoint,
    config: ObjectiveConfig,
    checkpoint: str,
    epochs: float | None,
    out: str | Path | None,
    export_program_file: bool,
    log: Any,
) -> ReplayResult:
    # The applied policy's rates are exact; projecting again would be a no-op but costs a trace.
    pruned = prune_policy(config, policy)  # refuses channels that differ from the trial's
    if policy.removed_sha256 is not None:
        log(f"replay: removed exactly the trial's channels ({policy.removed_sha256[:19]}...)")
    retrain_epochs = epochs if epochs is not None else pruned.policy.retrain.epochs * 10
    log(f"replay: fine-tuning the pruned model for {retrain_epochs:g} epochs")
    finetune(pruned, config, retrain_epochs, log)
    test = evaluate(pruned.model, pruned.splits.test, pruned.device)
    val = evaluate(pruned.model, pruned.splits.val, pruned.device)
    base_macs, base_params = base_macs_params(base)
    metrics = {
        "test_accuracy": test.accuracy,
        "val_accuracy": val.accuracy,
        "macs": float(pruned.macs),
        "macs_ratio": pruned.macs / base_macs,
        "params": float(pruned.params),
        "params_ratio": pruned.params / base_params,
        "base_test_accuracy": float(base.metrics.get("test_accuracy", float("nan"))),
        "finetune_epochs": float(retrain_epochs),
    }
    out_path = (
        Path(out) if out else Path(checkpoint).with_name(f"{Path(checkpoint).stem}-pruned.pt")
    )
    pruned.model.cpu()
    save_checkpoint(out_path, pruned.model, pruned.history, pruned.policy, metrics, base.sha256)
    program: Path | None = None
    if export_program_file:
        from autoprune.program import export_program

        try:  # loads with stock PyTorch, no autoprune: what ships
            program = export_program(
                pruned.model, base.spec.example_inputs(), out_path.with_suffix(".pt2")
            )
        except UserError as exc:
            log(f"replay: {out_path.with_suffix('.pt2')} not written: {exc}")
    return ReplayResult(
        out_path,
        test.accuracy,
        val.accuracy,
        metrics["macs_ratio"],
        metrics["params_ratio"],
        pruned.policy,
        program,
    )
