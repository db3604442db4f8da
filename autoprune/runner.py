"""Running a search: the wiring from a :class:`~autoprune.config.SearchConfig` to a study.

:func:`search` validates every input before the storage is touched, opens (or creates) the
study, prepares the base model and the space (:mod:`autoprune.prepare`), runs the missing
trials with the chosen executor (:mod:`autoprune.executors`) under a progress line, and
exports the feasible front (:mod:`autoprune.export`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoprune import ladder, prepare
from autoprune import study as studies
from autoprune.base import BaseCheckpoint
from autoprune.baselines import enqueue_baselines
from autoprune.config import SearchConfig
from autoprune.data import canonical_name
from autoprune.errors import UserError
from autoprune.export import export_front
from autoprune.logs import Log
from autoprune.progress import Progress
from autoprune.sampler import make_sampler
from autoprune.space import SearchSpace, SpaceContext
from autoprune.storage import raise_if_lost


@dataclass
class SearchOutcome:
    """Where a search's results are: the study, and the exported front's folder."""

    study_name: str
    storage: str  # SQLAlchemy URL of the study's database
    complete: int  # the study's COMPLETE trials after this run
    export_dir: Path | None  # <policies_dir>/<study>/, or None when export was off

    def front(self) -> list[studies.FrontPoint]:
        """The study's feasible Pareto front, by ascending MACs ratio."""
        return studies.pareto_front(
            studies.load_study(studies.open_storage(self.storage), self.study_name)
        )

    def winner(self) -> studies.FrontPoint:
        """The best front point at the budget (what ``replay --study`` takes)."""
        study = studies.load_study(studies.open_storage(self.storage), self.study_name)
        return studies.winner(studies.pareto_front(study), studies.study_budget(study))


def search(
    config: SearchConfig,
    log: Log = print,
    quiet: bool = False,
    export: bool = True,
    baselines_only: str | None = None,
    policies_dir: str | Path = "policies",
) -> SearchOutcome:
    """Run (or continue) a search until the study has ``config.trials`` COMPLETE trials.

    Every input is validated before the storage is touched, so a bad command changes nothing.

    Args:
        config: the search; stored on the study so ``autoprune resume NAME`` needs nothing else.
        log: called with one line per event (base training, trials to run).
        quiet: no progress line.
        export: write the feasible front to ``<policies_dir>/<study>/`` at the end.
        baselines_only: run only the baselines of this set (default | all) that the study has
            not run yet, however many trials it holds (``autoprune baselines NAME``); the
            stored config keeps its own ``baselines``.
        policies_dir: the folder the front's folder is made in (default ``policies`` under
            the current directory); not stored on the study, so ``resume`` takes it again.
    """
    config.validate()
    if export and Path(policies_dir).exists() and not Path(policies_dir).is_dir():
        raise UserError(
            f"--policies-dir {policies_dir} is a file: give a folder to write the front's policies in"
        )
    config = replace(config, dataset=canonical_name(config.dataset))
    space = SearchSpace.load(config.space)
    if config.objective != "latency":  # a latency search's MACs target is calibrated below
        space.check_budget(config.target())
    sampler = make_sampler(config.sampler, config.seed, config.trials, _concurrent(config))
    storage = studies.open_storage(config.storage)
    base = prepare.resolve_base(config, log)
    config = _with_base(config, base)
    name = studies.study_name_for(config)
    if config.objective == "latency" and config.macs_target is None:
        stored = studies.stored_config(storage, name, config)
        target = prepare.latency_macs_target(config, space, base, stored, log)
        config = replace(config, macs_target=target)  # explore brackets sample below it
    # An unreachable target stops here, in one line, before the study is touched.
    min_target = prepare.lowest_target(space, base, config, log)
    study = _open_study(storage, name, config, sampler, log)
    objective = prepare.objective_config(config, space)
    ctx = prepare.space_context(space, base, config, objective, min_target, log)
    url = config.storage or studies.default_storage_url()
    done = studies.complete_count(study)
    missing = config.trials - done
    if missing > 0 or baselines_only:
        config, missing = _enqueue_baselines(study, space, ctx, config, done, baselines_only, log)
    screening = (
        f"; screening {config.screen} candidates per fine-tuned trial while the proxy ranks "
        f"(--screen-floor {config.screen_floor:g})"
        if config.screen > 1
        else ""
    )
    log(f"study '{name}' in {url}: {done} complete, running {max(missing, 0)} more{screening}")
    # A failed trial is replaced until the study is full; a baselines-only run asks no more
    # than the baselines it enqueued (a replacement would be a searched trial).
    refill = not baselines_only
    if missing > 0:
        _run(study, space, ctx, objective, config, missing, refill, quiet, storage)
    if config.rungs > 1 and not baselines_only:
        climb(study, space, ctx, objective, config, quiet, storage, log)
    export_dir = None
    if export:
        export_dir = Path(policies_dir) / name
        export_front(study, export_dir)
    return SearchOutcome(name, url, studies.complete_count(study), export_dir)


def _with_base(config: SearchConfig, base: BaseCheckpoint) -> SearchConfig:
    """``config`` naming its base exactly: the model, the checkpoint's absolute path, the image
    size, and the data folder's absolute path (what the study stores for ``resume``)."""
    config = replace(
        config,
        model=base.spec.name,
        base_checkpoint=str(Path(base.path).resolve()),
        image_size=base.image_size(config.dataset, config.image_size),
    )
    if config.data_root:
        config = replace(config, data_root=str(Path(config.data_root).resolve()))
    return config


def _open_study(storage: Any, name: str, config: SearchConfig, sampler: Any, log: Log) -> Any:
    """Create or load the study, store ``config`` on it and recover a dead driver's trials."""
    study = studies.create_or_load(storage, name, config, sampler)
    existing = studies.trial_count(study)
    if existing:
        # A sampler restarted with the seed it began with would draw the very parameters of
        # the study's first trials again (all of them for `random`, the start-up ones for the
        # others), and a second driver of a shared study would copy the first. Offsetting the
        # seed by the trials already stored keeps runs reproducible and new draws new.
        study.sampler = make_sampler(
            config.sampler, config.seed + existing, config.trials, _concurrent(config)
        )
    studies.save_config(study, config)
    studies.recover_stale_trials(study, log)
    return study


def _enqueue_baselines(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    config: SearchConfig,
    done: int,
    baselines_only: str | None,
    log: Log,
) -> tuple[SearchConfig, int]:
    """Queue the baselines the study has not run; returns the config and the trials to run,
    given the ``done`` (COMPLETE) trials it holds.

    A baselines-only run (``autoprune baselines``) runs exactly the waiting baselines, its
    ``trials`` raised to make room for them (the stored config keeps its own).
    """
    added = enqueue_baselines(study, space, ctx, baselines_only or config.baselines)
    if added:
        log(f"baselines enqueued first: {', '.join(added)}")
    waiting = studies.waiting_baselines(study)
    if baselines_only:
        if not waiting:
            log("every baseline of this space is in the study already")
        return replace(config, trials=done + len(waiting)), len(waiting)
    missing = config.trials - done
    if len(waiting) >= missing:
        log(
            f"--trials {config.trials} leaves room for baselines only ({len(waiting)} waiting): "
            "raise --trials to search"
        )
    return config, missing


def _concurrent(config: SearchConfig) -> bool:
    """Whether candidates are asked while others are still RUNNING: several trials at once, or
    a screened bracket, whose K candidates are all asked before any is told. TPE then lies
    about the running ones (constant liar), so a bracket's candidates spread instead of being
    K draws from one unchanged model."""
    return config.max_concurrent > 1 or config.screen > 1


def _run(
    study: Any,
    space: SearchSpace,
    ctx: Any,
    objective: Any,
    config: SearchConfig,
    missing: int,
    refill: bool,
    quiet: bool,
    storage: Any,
) -> None:
    """Run ``missing`` brackets with the configured executor, a progress line over them."""
    done = studies.complete_count(study)
    with (
        Progress(
            config.trials, done, config.budgets(), quiet=quiet, parallel=config.max_concurrent
        ) as progress,
        raise_if_lost(storage),  # a database gone for good stops the search with one line
    ):
        if config.executor == "local":
            from autoprune.executors.local import run_local

            run_local(study, space, ctx, objective, config, missing, progress, refill)
        else:
            from autoprune.executors.ray_tune import run_ray

            run_ray(study, space, ctx, objective, config, missing, progress, refill)


def climb(
    study: Any,
    space: SearchSpace,
    ctx: Any,
    objective: Any,
    config: SearchConfig,
    quiet: bool,
    storage: Any,
    log: Log,
) -> None:
    """The ladder (:mod:`autoprune.ladder`): promote and run rung after rung until none is owed."""
    for _ in range(config.rungs):  # one rung per round (a resumed ladder may finish a rung first)
        promotions = ladder.owed(study, config.rungs, config.eta)
        ladder.enqueue(study, promotions)
        queued = ladder.waiting(study)
        if not queued:
            return
        rung = max(studies.rung_of(t) for t in queued)
        log(
            f"ladder rung {rung}: {len(queued)} trial(s) at the budget fine-tuned "
            f"{config.eta**rung}x longer"
        )
        run = replace(config, trials=studies.complete_count(study) + len(queued))
        _run(study, space, ctx, objective, run, len(queued), False, quiet, storage)
