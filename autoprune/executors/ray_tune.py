"""The Ray Tune executor: trials run in Ray worker processes; the driver samples and records.

An ``OptunaSearch`` subclass (:class:`~autoprune.executors.searcher.PolicySearch`, made by
:func:`policy_searcher`) turns each sampled set of params into a bracket of policies on the driver, hands workers only those policies, and records every result
the autoprune way (constraint, applied policy, timings; errors and NaN become FAIL) before
``tell``. The Optuna study in SQL is the search's record: Tune's own snapshots are not used.

Faults: a worker catches every failure of a candidate itself and reports it
(:func:`~autoprune.executors.results.evaluate_bracket_for_trial`), so a Tune trial errors only
when its worker process died (killed, the OOM killer, a lost node). Tune then restarts it up to
``--max-failures`` times with the same config, that is the same bracket of already-asked Optuna
trials; the searcher hears of the Tune trial only when it ends for good, and records its Optuna
trials once: COMPLETE from the retry that reported, or FAIL ``worker_died`` with Ray's reason.

No shared filesystem: workers read no file of the driver. The base checkpoint and its cached
scores travel once per search through Ray's object store (:mod:`autoprune.shipping`), and
every trial records the Ray node it ran on (user attrs ``node_id``, ``node_ip``).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.evaluate import ObjectiveConfig
from autoprune.executors.brackets import BracketSource, FailureStreak
from autoprune.executors.results import evaluate_bracket_for_trial
from autoprune.files import studies_dir
from autoprune.progress import Progress
from autoprune.records import TrialRecord
from autoprune.shipping import Shipment, pack, unpack
from autoprune.space import SearchSpace, SpaceContext


def trainable(
    config: dict[str, Any], objective: ObjectiveConfig, shipment: Shipment, driver_node: str
) -> None:
    """What a Ray worker runs for one trial: evaluate the bracket it was handed and report.

    The base checkpoint comes from ``shipment`` (installed once per worker process), never
    from the driver's disk; every candidate's report names the node it ran on.
    """
    import ray
    from ray import tune

    node_id = ray.get_runtime_context().get_node_id()
    objective = unpack(shipment, objective, on_driver_node=node_id == driver_node)
    node = TrialRecord(node_id=node_id, node_ip=ray.util.get_node_ip_address()).to_attrs()
    tune.report(evaluate_bracket_for_trial(objective, config["policies"], extra=node))


def run_ray(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    objective: ObjectiveConfig,
    config: SearchConfig,
    missing: int,
    progress: Progress,
    refill: bool = True,
) -> None:
    """Run brackets through Ray Tune until the study holds ``config.trials`` COMPLETE trials.

    Starts Ray here unless it already runs. ``missing`` brackets are planned; with ``refill``
    each one that ends without a COMPLETE trial is replaced (see :func:`run_local`).

    Raises:
        UserError: too many brackets in a row failed (see :class:`FailureStreak`).
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # With verbose=0 and the old output engine, Tune prints no tables: our progress line only.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(config.max_concurrent))
    import ray
    from ray import tune
    from ray.tune import FailureConfig, RunConfig
    from ray.tune.search import ConcurrencyLimiter

    # The shipment's base scores are computed while Ray starts: its start mostly waits on
    # the processes it spawns, which leaves the driver's cores to the scoring.
    packing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack")
    packed = packing.submit(pack, objective, space.criteria, config.seed)
    packing.shutdown(wait=False)  # its one thread ends when the shipment is made
    started_here = not ray.is_initialized()
    if started_here:
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, math.ceil(config.cpus_per_trial)),
                num_gpus=None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
            )
    try:
        shipment = packed.result()  # a bad base checkpoint raises its UserError here
        streak = FailureStreak(study.study_name)
        policies = policy_searcher(study, space, ctx, config, progress, missing, refill, streak)
        searcher = ConcurrencyLimiter(policies, max_concurrent=config.max_concurrent)
        resources = {
            "cpu": config.cpus_per_trial,
            "gpu": config.gpus_per_trial,
            **(config.resources_per_trial or {}),  # custom resources, e.g. {"worker_node": 1}
        }
        # Put in the object store once by with_parameters; every worker reads it from there.
        parameters = tune.with_parameters(
            trainable,
            objective=objective,
            shipment=shipment,
            driver_node=ray.get_runtime_context().get_node_id(),
        )
        tuner = tune.Tuner(
            tune.with_resources(parameters, resources),
            tune_config=tune.TuneConfig(
                # Unbounded: the searcher decides when the study is full (Searcher.FINISHED).
                search_alg=searcher,
                num_samples=-1,
                reuse_actors=True,
            ),
            run_config=RunConfig(
                name=study.study_name,
                storage_path=str((studies_dir() / "ray").resolve()),
                verbose=0,
                failure_config=FailureConfig(max_failures=config.max_failures),
                callbacks=[policies.tracker()],
                log_to_file=True,
            ),
        )
        tuner.fit()
        if streak.stalled:
            raise streak.error()
    finally:
        if started_here:
            ray.shutdown()


def policy_searcher(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    config: SearchConfig,
    progress: Progress | None,
    missing: int | None = None,
    refill: bool = True,
    streak: FailureStreak | None = None,
) -> Any:
    """A Ray Tune searcher over ``space`` that records results in ``study`` (see module doc).

    It plans ``missing`` brackets (default: the COMPLETE trials the study lacks), one more for
    each that ends without a COMPLETE trial when ``refill``, and answers ``FINISHED`` once the
    study is full, the plan is done, or ``streak`` says the search stalled.
    """
    from autoprune.executors.searcher import PolicySearch

    source = BracketSource(study, space, ctx, config, progress)
    return PolicySearch(
        progress,
        source=source,
        config=config,
        planned=missing if missing is not None else config.trials - studies.complete_count(study),
        refill=refill,
        streak=streak or FailureStreak(study.study_name),
        space=source,
        metric=config.metric_names(),
        mode=[d[:3] for d in config.directions()],  # "max", "min"
        sampler=study.sampler,
        seed=config.seed,
        study_name=study.study_name,
        storage=studies.storage_of(study),
    )
