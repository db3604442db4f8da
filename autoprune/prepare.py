"""Preparing a search: its base checkpoint, its residual-block ranking, and what trials share.

Everything here runs once per search, on the driver, before the first trial: the base model
is resolved (given, or the cached embedded default, trained on first use), traced into the
search space's context (groups, stages, the blocks depth pruning may drop, lowest PLS-VIP
score first, the rate priors of :mod:`autoprune.priors`), and turned into the :class:`~autoprune.evaluate.ObjectiveConfig` every trial
evaluates with.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from autoprune import depth
from autoprune.base import (
    DEFAULT_DATASET,
    DEFAULT_MODEL,
    BaseCheckpoint,
    default_base_path,
    ensure_default_base,
    load_base,
)
from autoprune.budget import (
    SAFETY_MARGIN,
    base_macs_model,
    cap_reaching,
    check_reachable,
    reachable_floor,
)
from autoprune.config import SearchConfig
from autoprune.criteria.calibration import Calibration
from autoprune.errors import UserError
from autoprune.evaluate import ObjectiveConfig, load_splits, prune_policy, torch_threads
from autoprune.files import score_cache_dir
from autoprune.groups import build_graph, current_groups
from autoprune.latency import LatencySettings, calibrate
from autoprune.logs import Log
from autoprune.policy import GroupPolicy, Policy
from autoprune.priors import compute_priors
from autoprune.space import SearchSpace, SpaceContext, build_context
from autoprune.train import select_device


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


def lowest_target(
    space: SearchSpace,
    base: BaseCheckpoint,
    config: SearchConfig,
    log: Callable[[str], None] | None = None,
) -> float:
    """The lowest MACs target a policy of ``space`` reaches on ``base``; raises when the
    search's own target is below it, before any trial runs.

    Counted on the base with no block dropped (a policy may drop none), with every group at
    ``space.max_rate`` in steps of ``--channel-multiple``. Explore brackets sample targets above
    it, so no trial is asked for what no policy can reach. A bundled space's ``max_rate`` is
    raised (in place, and said through ``log``) as far as the target needs: the user asked for
    the budget, not for the cap a packaged file happens to carry.

    Raises:
        UserError: the target is out of reach, naming the groups that cannot shrink and the
            smallest budget that works.
    """
    inputs = base.spec.example_inputs()
    macs_model = base_macs_model(base.sha256, base.build, inputs)
    what = (
        base.spec.name
        if config.macs_target is None
        else (f"{base.spec.name} (the MACs target calibrated for --budget-latency)")
    )
    if space.bundled:
        cap = cap_reaching(macs_model, config.target(), space.max_rate, config.channel_multiple)
        if cap > space.max_rate:
            if log is not None:
                log(
                    f"MACs target {config.target():g} needs deeper cuts than the {space.name} "
                    f"space's max_rate {space.max_rate:g}: this search lets a group lose up to "
                    f"{cap:g} of its channels"
                )
            space.max_rate = cap
    check_reachable(macs_model, config.target(), space.max_rate, config.channel_multiple, what)
    return reachable_floor(macs_model, space.max_rate, config.channel_multiple) + SAFETY_MARGIN


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
    min_target: float,
    log: Log = print,
) -> SpaceContext:
    """The base model as the search space sees it: groups, stages, ranked blocks, rate priors.

    ``min_target`` is :func:`lowest_target`'s answer, asked once before the study is opened.

    Blocks are ranked only when the space may drop some; the priors are computed only when the
    space samples around them (the sensitivity curves come from their on-disk cache when a
    study of this base measured them before).
    """
    ranking = block_ranking(base, config) if space.max_blocks_per_stage > 0 else {}
    if space.max_blocks_per_stage > 0 and not ranking:
        log(
            f"{base.spec.name} has no removable residual block: this search drops no blocks "
            "(`autoprune inspect --blocks` lists them)"
        )
    ctx = build_context(base, config.target(), config.seed, ranking)
    ctx.channel_multiple = config.channel_multiple
    ctx.min_target = min_target
    if space.priors:
        # Raw rates: budget projection rounds them to --channel-multiple like any policy's.
        ctx.priors = compute_priors(
            space.priors, objective, config.target(), space.max_rate, log=log
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
        score_cache=str(score_cache_dir().resolve()),
        latency=latency_settings(config) if config.measures_latency() else None,
    )


def latency_settings(config: SearchConfig) -> LatencySettings:
    return LatencySettings(
        batch_size=config.latency_batch_size,
        repeats=config.latency_repeats,
        warmup=config.latency_warmup,
        runtime=config.latency_runtime,
    )


def latency_macs_target(
    config: SearchConfig,
    space: SearchSpace,
    base: BaseCheckpoint,
    stored: SearchConfig | None,
    log: Log = print,
) -> float:
    """The MACs ratio a latency search projects candidates onto (see :mod:`autoprune.latency`).

    A study that calibrated for this latency budget before keeps its target, so a resumed or
    re-run search projects onto the same MACs ratio; otherwise uniform L1 prunings of the base
    are timed on this (the driver's) device. Each trial still times itself on its own device,
    and that measurement is what the constraint and the front use.
    """
    if (
        stored is not None
        and stored.macs_target is not None
        and stored.objective == config.objective
        and stored.budget_latency == config.budget_latency
    ):
        return stored.macs_target
    assert config.budget_latency is not None
    objective = objective_config(config, space)
    model = base.build()
    names = list(current_groups(model, build_graph(model, base.spec.example_inputs())))

    def prune_uniform(ratio: float) -> nn.Module:
        policy = Policy(
            model=base.spec,
            groups={g: GroupPolicy(rate=0.5, criterion="l1") for g in names},
            target_macs_ratio=ratio,
            channel_multiple=config.channel_multiple,
        )
        return prune_policy(objective, policy).model

    with torch_threads(objective.threads):  # timed on the threads the trials are timed on
        calibration = calibrate(
            prune_uniform,
            base.build(),
            tuple(base.spec.input_shape),
            select_device(config.device),
            latency_settings(config),
            config.budget_latency,
            log,
        )
    return calibration.macs_target
