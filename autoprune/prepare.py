"""Preparing a search: its base checkpoint, its residual-block ranking, and what trials share.

Everything here runs once per search, on the driver, before the first trial: the base model
is resolved (given, or the cached embedded default, trained on first use), traced into the
search space's context (groups, stages, the blocks depth pruning may drop, lowest PLS-VIP
score first, the rate priors of :mod:`autoprune.priors`), and turned into the :class:`~autoprune.objective.ObjectiveConfig` every trial
evaluates with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune import depth
from autoprune.base import (
    DEFAULT_DATASET,
    DEFAULT_MODEL,
    BaseCheckpoint,
    default_base_path,
    ensure_default_base,
    load_base,
)
from autoprune.config import SearchConfig
from autoprune.criteria.calibration import Calibration
from autoprune.errors import UserError
from autoprune.files import studies_dir
from autoprune.objective import ObjectiveConfig, load_splits
from autoprune.priors import compute_priors
from autoprune.space import SearchSpace, SpaceContext, build_context

Log = Callable[[str], Any]


def resolve_base(config: SearchConfig, log: Log) -> BaseCheckpoint:
    """The base checkpoint: given, or the cached embedded default (trained on first use)."""
    if config.base_checkpoint:
        base = load_base(config.base_checkpoint)
        if base.spec.name != config.model and config.model != DEFAULT_MODEL:
            raise UserError(
                f"--model {config.model} does not match the base checkpoint's model {base.spec.name}: drop --model or fix it"
            )
        return base
    if (config.model, config.dataset) == (DEFAULT_MODEL, DEFAULT_DATASET):
        return ensure_default_base(config.model, config.dataset, log=log)
    cached = default_base_path(config.model, config.dataset)
    if cached.is_file():
        return load_base(cached)
    raise UserError(
        f"no base checkpoint for {config.model} on {config.dataset}: pass --base-checkpoint PATH, or train one with "
        f"`autoprune train --model {config.model} --dataset {config.dataset} --epochs N` (it is cached at {cached})"
    )


def block_ranking(base: BaseCheckpoint, config: SearchConfig) -> dict[str, list[str]]:
    """Removable residual blocks per stage, lowest discriminative score (PLS-VIP) first."""
    splits = load_splits(config.dataset, config.data_root, image_size=config.image_size)
    calibration = Calibration(
        splits.calibration, splits.name, num_images=config.calibration_images, seed=config.seed
    )
    rows = depth.block_scores(base.build(), calibration.batches(), num_classes=splits.num_classes)
    ranking: dict[str, list[str]] = {}
    for row in sorted((r for r in rows if r.removable), key=lambda r: r.score):
        ranking.setdefault(row.name.rpartition(".")[0] or "model", []).append(row.name)
    return ranking


def space_context(
    space: SearchSpace,
    base: BaseCheckpoint,
    config: SearchConfig,
    objective: ObjectiveConfig,
    log: Log = print,
) -> SpaceContext:
    """The base model as the search space sees it: groups, stages, ranked blocks, rate priors.

    Blocks are ranked only when the space may drop some; the priors are computed only when the
    space samples around them (the sensitivity curves come from their on-disk cache when a
    study of this base measured them before).
    """
    ranking = block_ranking(base, config) if space.max_blocks_per_stage > 0 else {}
    ctx = build_context(base, config.budget_flops, config.seed, ranking)
    if space.priors:
        ctx.priors = compute_priors(
            space.priors, objective, config.budget_flops, space.max_rate, log=log
        )
    return ctx


def objective_config(config: SearchConfig, space: SearchSpace) -> ObjectiveConfig:
    """How every trial of the search evaluates its policy (shared by all trials)."""
    return ObjectiveConfig(
        base_checkpoint=config.base_checkpoint or "",
        dataset=config.dataset,
        data_root=config.data_root,
        image_size=config.image_size,
        device=config.device,
        precision=config.precision,
        num_workers=config.trial_loader_workers(),
        threads=max(1, int(config.cpus_per_trial)),
        max_rate=space.max_rate,
        calibration_images=config.calibration_images,
        score_cache=str((studies_dir() / "cache" / "scores").resolve()),
    )
