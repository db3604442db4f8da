"""Studies in SQL storage: open/create, stale-trial recovery, recording results, the Pareto front.

Every search is an Optuna study with directions ``[maximize val_accuracy, minimize macs_ratio]``
and the FLOPs budget as a constraint (``macs_ratio - budget <= 0``); with ``--objective latency``
the second objective and the constraint are the latency ratio instead, and with ``both`` the
study has three objectives (val accuracy, MACs ratio, latency ratio). The objectives are named
(``study.set_metric_names``), so Optuna's own tools show ``val_accuracy`` and ``macs_ratio``. Each COMPLETE trial carries
the **applied** policy (after budget projection and criterion selection) as the user attr
``policy``, so what is exported is exactly what was measured. The search config is stored on
the study (user attr ``autoprune.config``) so ``autoprune resume NAME`` needs only the name.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.config import OBJECTIVES, SearchConfig
from autoprune.data import canonical_name
from autoprune.errors import UserError
from autoprune.failures import Failure, non_finite
from autoprune.policy import Policy
from autoprune.storage import default_storage_url as default_storage_url
from autoprune.storage import open_storage as open_storage

DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]
METRIC_NAMES = ["val_accuracy", "macs_ratio"]  # the default objective's (``--objective macs``)
CONFIG_ATTR = "autoprune.config"
DRIVER_ATTR = "autoprune.driver"
BASELINE_ATTR = "autoprune.baseline"  # set on a baseline trial: its name, e.g. "uniform-l1"
RETRY_ATTR = "autoprune.retry_of"  # set on a re-enqueued trial: the number of the one it retries
EXPLORE_ATTR = "autoprune.explore"  # set on a retry: whether the original sampled its target
# Successive halving (--rungs): a promoted trial re-runs its parent's params with eta**rung times
# the fine-tune; it carries its rung and its parent's number, and a baseline's keeps its name.
RUNG_ATTR = "autoprune.rung"
PARENT_ATTR = "autoprune.promoted_from"
CONSTRAINT = "macs_budget"
# The constraint each budgeted ratio is stored under (Optuna's ``set_constraint`` key).
CONSTRAINTS = {"macs_ratio": CONSTRAINT, "latency_ratio": "latency_budget"}
# A policy within this much of the budget is "at the budget" (the projection's tolerance).
AT_BUDGET = 0.01

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_name_for(config: SearchConfig) -> str:
    """Default study name: one study per (model, dataset, space, budget)."""
    if config.study:
        return config.study
    space = Path(config.space).stem
    dataset = config.dataset
    if dataset.startswith("imagefolder:"):  # the folder's name, not its whole absolute path
        dataset = "imagefolder-" + Path(dataset.split(":", 1)[1]).name
    budget = {
        "macs": f"b{config.budget_flops:g}",
        "latency": f"lat{config.budget_latency or 0.5:g}",
        "both": f"b{config.budget_flops:g}-lat"
        + (f"{config.budget_latency:g}" if config.budget_latency is not None else ""),
    }[config.objective]
    return f"{config.model}-{dataset}-{space}-{budget}".replace("/", "_").replace(":", "_")


def create_or_load(
    storage: optuna.storages.BaseStorage, name: str, config: SearchConfig, sampler: Any
) -> optuna.Study:
    """Open the study ``name`` or create it; check a stored study matches this search."""
    if name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        _check_directions(study, config)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None:
            _check_same_search(name, SearchConfig.from_dict(stored), config)
        return study
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        directions=directions_for(config.objective),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(config.metric_names())
    return study


def _check_directions(study: optuna.Study, config: SearchConfig) -> None:
    directions = [d.name.lower() for d in study.directions]
    wanted = directions_for(config.objective)
    if directions != wanted:
        raise UserError(
            f"study '{study.study_name}' exists with directions {directions}, not {wanted} "
            f"(--objective {config.objective}): it is another objective's study or not an "
            "autoprune study; choose another --study name"
        )


def directions_for(objective: str) -> list[Literal["maximize", "minimize"]]:
    """Maximize val accuracy, minimize every ratio it is traded against."""
    minimize: list[Literal["maximize", "minimize"]] = ["minimize"]
    return ["maximize", *minimize * (len(OBJECTIVES[objective]) - 1)]


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objective names (``val_accuracy``, ``macs_ratio``, maybe ``latency_ratio``)."""
    names = getattr(study, "_autoprune_metric_names", None)
    if names is None:
        names = study.metric_names or METRIC_NAMES
        study._autoprune_metric_names = names  # type: ignore[attr-defined]
    return list(names)


def search_config(study: optuna.Study) -> SearchConfig:
    """The stored search's config (defaults for a study autoprune did not create)."""
    return SearchConfig.from_dict(study.user_attrs.get(CONFIG_ATTR) or {})


def objective_of(study: optuna.Study) -> str:
    """``macs``, ``latency`` or ``both``: what the study trades val accuracy against."""
    return str((study.user_attrs.get(CONFIG_ATTR) or {}).get("objective", "macs"))


def front_metric(study: optuna.Study) -> str:
    """The ratio the study's budget bounds, its front is ordered by and its winner picked by."""
    return "latency_ratio" if objective_of(study) == "latency" else "macs_ratio"


def trial_metric(trial: FrozenTrial, name: str) -> float | None:
    """A finished trial's ``val_accuracy``, ``macs_ratio``, ``latency_ratio`` or
    ``params_ratio`` (None when it has none, e.g. no latency measured)."""
    if name == "val_accuracy":
        return float(trial.values[0]) if trial.values else None
    value = trial.user_attrs.get(name)
    if value is None and name == "macs_ratio" and trial.values and len(trial.values) == 2:
        value = trial.values[1]  # studies from before the ratio was stored as a user attr
    return float(value) if isinstance(value, (int, float)) else None


def _check_same_search(name: str, stored: SearchConfig, config: SearchConfig) -> None:
    for key in ("model", "dataset", "budget_flops", "space"):
        a, b = getattr(stored, key), getattr(config, key)
        if key == "space":
            a, b = Path(a).stem, Path(b).stem
        elif key == "dataset":  # studies made before dataset paths were stored absolute
            a, b = canonical_name(a), canonical_name(b)
        if a != b:
            raise UserError(
                f"study '{name}' was created with {key}={getattr(stored, key)!r}, not {getattr(config, key)!r}: "
                f"resume it with `autoprune resume {name}` or pick another --study name"
            )


def save_config(study: optuna.Study, config: SearchConfig) -> None:
    study.set_user_attr(CONFIG_ATTR, config.to_dict())


def load_config(storage: optuna.storages.BaseStorage, name: str) -> SearchConfig:
    study = load_study(storage, name)
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise UserError(
            f"study '{name}' has no stored autoprune config: it was not created by `autoprune search`"
        )
    return SearchConfig.from_dict(raw)


def stored_config(
    storage: optuna.storages.BaseStorage, name: str, config: SearchConfig
) -> SearchConfig | None:
    """The config stored on study ``name`` (None when there is no such study, or it stores
    none), after checking the study's directions fit ``config``'s objective."""
    if name not in study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    _check_directions(study, config)
    raw = study.user_attrs.get(CONFIG_ATTR)
    return SearchConfig.from_dict(raw) if raw else None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of every study in ``storage``, sorted."""
    return sorted(
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    )


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    names = study_names(storage)
    if name not in names:
        raise UserError(
            f"no study named '{name}' in this storage; existing: {', '.join(names) or 'none'} (see `autoprune studies`)"
        )
    return optuna.load_study(study_name=name, storage=storage)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes.

    Optuna keeps it in the private ``Study._storage`` and offers no accessor; autoprune needs
    it to hand Ray's ``OptunaSearch`` the very storage the study lives in and to fail the
    trials of a dead driver. This is the one place that reaches in.
    """
    return study._storage


# --------------------------------------------------------------------------- trial bookkeeping


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_driver(trial: optuna.Trial) -> None:
    """Record which process asked for the trial, so a later run can tell a crash from a live peer."""
    trial.set_user_attr(DRIVER_ATTR, driver_id())


def _driver_alive(owner: str | None) -> bool | None:
    """True/False for a driver on this host; None when it ran elsewhere (cannot tell)."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    # This process runs one search at a time, so its own RUNNING trials are leftovers.
    return int(pid) != os.getpid()


def recover_stale_trials(study: optuna.Study, log: Any = print) -> int:
    """Mark trials left RUNNING by a dead driver as FAIL and enqueue their params once again.

    Trials whose driver is another live process on this host, or a process on another host,
    are left alone (a shared PostgreSQL study may have several drivers at once).
    """
    # A trial's owner is dead, so no Trial object of this process can finish it: its state and
    # reason are written through the storage, addressed by the public (study, number) lookup.
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        alive = _driver_alive(trial.user_attrs.get(DRIVER_ATTR))
        if alive is None:
            log(
                f"trial {trial.number} is RUNNING under {trial.user_attrs.get(DRIVER_ATTR)} (another host): left alone"
            )
            continue
        if alive:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        died = Failure("driver_died", "driver died while the trial ran; re-enqueued")
        for key, value in died.attrs().items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if trial.params:
            attrs: dict[str, Any] = {
                RETRY_ATTR: trial.number,
                # A retry keeps its target: explore (sampled) or the budget.
                EXPLORE_ATTR: "target_macs_ratio" in trial.params,
            }
            if trial.user_attrs.get(BASELINE_ATTR):  # still that baseline, not a searched trial
                attrs[BASELINE_ATTR] = trial.user_attrs[BASELINE_ATTR]
            for key in (RUNG_ATTR, PARENT_ATTR):  # still that rung of the ladder
                if key in trial.user_attrs:
                    attrs[key] = trial.user_attrs[key]
            study.enqueue_trial(trial.params, user_attrs=attrs)
        recovered += 1
    if recovered:
        log(
            f"recovered {recovered} trial(s) left RUNNING by a crashed search: marked FAIL and re-enqueued"
        )
    return recovered


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials (not copied: read them, do not change them)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def rung_of(trial: FrozenTrial) -> int:
    """The ladder rung a trial was fine-tuned at (0: the search's own length)."""
    return int(trial.user_attrs.get(RUNG_ATTR, 0))


def current_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials whose figure is their policy's latest: a trial promoted to a higher rung
    (its child COMPLETE) is superseded by its child's longer fine-tune."""
    done = completed_trials(study)
    superseded = {int(t.user_attrs[PARENT_ATTR]) for t in done if PARENT_ATTR in t.user_attrs}
    return [t for t in done if t.number not in superseded]


def complete_count(study: optuna.Study) -> int:
    return len(completed_trials(study))


def trial_count(study: optuna.Study) -> int:
    """Trials of any state stored in the study (asked, running, finished)."""
    return len(study.get_trials(deepcopy=False))


def finish_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    result: dict[str, Any] | None,
    budget: float | dict[str, float],
    error: Failure | None = None,
) -> TrialState:
    """Record one trial's outcome: constraint + user attrs + tell. Never leaves it RUNNING.

    ``budget`` is the largest allowed MACs ratio, or one bound per budgeted ratio
    (:meth:`~autoprune.config.SearchConfig.budgets`); each becomes a constraint. The values
    told are the study's objectives (:func:`metric_names`), read from the result.

    A result with ``finetuned: False`` was screened out by the proxy: it is told PRUNED with
    its proxy and MACs stored. Missing or non-finite metrics and failures (``error``, or one
    the worker reported) become FAIL with the reason in user attrs ``error`` and
    ``error_kind`` (see :mod:`autoprune.failures`).
    """
    budgets = {"macs_ratio": budget} if isinstance(budget, (int, float)) else dict(budget)
    names = metric_names(study)
    values = None
    if result and error is None and "error" in result:
        error = Failure.from_report(result)  # the worker caught it around this candidate
    screened_out = result is not None and result.get("finetuned") is False and error is None
    if result and error is None and not screened_out:
        raw = [result.get(m) for m in names]
        if all(isinstance(v, (int, float)) and math.isfinite(float(v)) for v in raw):
            values = [float(v) for v in raw]  # type: ignore[arg-type]
        else:
            error = non_finite(dict(zip(names, raw, strict=True)))
    if result:
        set_user_attrs(
            study,
            trial,
            {k: _jsonable(result[k]) for k in RECORDED if k in result and result[k] is not None},
        )
    if screened_out and error is None and result is not None:
        _set_constraints(trial, result, budgets)
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if values is None:
        failure = error or Failure("exception", "the trial reported no result")
        set_user_attrs(study, trial, failure.attrs())
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    _set_constraints(trial, result or {}, budgets)
    study.tell(trial, values)
    return TrialState.COMPLETE


def _set_constraints(
    trial: optuna.Trial, result: dict[str, Any], budgets: dict[str, float]
) -> None:
    """One constraint per budgeted ratio the result measured (feasible when <= 0)."""
    for metric, bound in budgets.items():
        value = result.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            trial.set_constraint(CONSTRAINTS[metric], float(value) - bound)


# What a trial stores of its result (user attrs), besides its values.
RECORDED = (
    "policy", "timings", "params_ratio", "macs", "params", "val_loss", "counters", "macs_ratio",
    "proxy_accuracy", "proxy_loss", "bracket", "wall", "overhead",
    "node_id", "node_ip",  # the Ray node the trial ran on (Ray executor only)
    # --objective latency|both: median ms of the pruned and the base model, their ratio, where
    "latency_ms", "base_latency_ms", "latency_ratio", "latency_device",
)  # fmt: skip


def finish_bracket(
    study: optuna.Study,
    trials: list[optuna.Trial],
    results: list[dict[str, Any] | None],
    budget: float | dict[str, float],
    wall: float,
    error: Failure | None = None,
) -> list[TrialState]:
    """Record a bracket: every candidate's outcome, and its cost on the fine-tuned trial.

    ``wall`` is the driver's time from asking the bracket's first trial to receiving its report
    (the DB writes that record it come after); what the candidates' own phases do not account
    for is stored as ``overhead`` — asking and sampling, Ray's scheduling (including any wait
    for free resources), pickling and transport — on the trial that was fine-tuned (the first
    one when none was).
    """
    spent = sum(float((r or {}).get("timings", {}).get("total", 0.0)) for r in results)
    first = trials[0].number
    keeper = next(
        (i for i, r in enumerate(results) if r and r.get("finetuned", True) and "error" not in r),
        0,
    )
    states = []
    for i, (trial, result) in enumerate(zip(trials, results, strict=True)):
        extra: dict[str, Any] = {"bracket": first}
        if i == keeper:
            extra.update(wall=round(wall, 3), overhead=round(max(wall - spent, 0.0), 3))
        merged = {**result, **extra} if result else None
        states.append(finish_trial(study, trial, merged, budget, error))
    return states


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=float))


def set_user_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attrs of a running trial, in one database transaction where possible.

    Optuna writes every user attr in a transaction (a commit) of its own and offers no call for
    several; a trial's result is a dozen. On a study in an RDB storage (SQLite by default) they
    are written in one transaction, through the helpers Optuna's own ``set_trial_user_attr``
    uses; on any other storage, or should those helpers change, one call per attr. A
    :class:`~autoprune.storage.ReconnectingStorage` keeps its calls one by one, so each is
    retried on its own across an outage.
    """
    if not attrs:
        return
    rdb = _rdb_backend(storage_of(study))
    if rdb is not None:
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(rdb.scoped_session, True) as session:
                for key, value in attrs.items():
                    rdb._set_trial_attr_without_commit(
                        session, models.TrialUserAttributeModel, trial._trial_id, key, value
                    )
            trial._cached_frozen_trial.user_attrs.update(attrs)  # what set_user_attr keeps
            return
        except (ImportError, AttributeError, TypeError):  # another Optuna: one call per attr
            pass
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _rdb_backend(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's caching wrapper (None for any other storage)."""
    if type(storage).__name__ == "_CachedStorage":  # what a study opened on an RDB storage uses
        storage = getattr(storage, "_backend", None)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


# --------------------------------------------------------------------------- front


@dataclass
class FrontPoint:
    number: int  # trial number
    val_accuracy: float
    macs_ratio: float
    params_ratio: float
    policy: Policy
    latency_ratio: float | None = None  # pruned/base median latency (latency objectives only)
    latency_ms: float | None = None  # the pruned model's median latency on the trial's device
    front_metric: str = "macs_ratio"  # the ratio the study's budget bounds
    rung: int = 0  # the ladder rung its figure was fine-tuned at (--rungs)

    def ratio(self, metric: str | None = None) -> float:
        """``macs_ratio`` or ``latency_ratio`` (default: the budgeted one); NaN when unmeasured."""
        value = getattr(self, metric or self.front_metric)
        return float("nan") if value is None else float(value)


def pareto_front(study: optuna.Study) -> list[FrontPoint]:
    """The feasible Pareto front, by ascending budgeted ratio (MACs, or latency)."""
    metric = front_metric(study)
    points = []
    for t in _front_trials(study):
        if "policy" not in t.user_attrs:
            continue
        points.append(
            FrontPoint(
                number=t.number,
                val_accuracy=float(t.values[0]),
                macs_ratio=trial_metric(t, "macs_ratio") or float("nan"),
                params_ratio=float(t.user_attrs.get("params_ratio", float("nan"))),
                policy=Policy.from_dict(t.user_attrs["policy"], source=f"trial {t.number}"),
                latency_ratio=trial_metric(t, "latency_ratio"),
                latency_ms=trial_metric(t, "latency_ms"),
                front_metric=metric,
                rung=rung_of(t),
            )
        )
    return sorted(points, key=lambda p: (p.ratio(), -p.val_accuracy))


def _front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's Pareto front; in a study with a ladder (``--rungs``), over each policy's latest
    figure, and at the budget over the highest rung only: a figure of a shorter fine-tune is
    never weighed against a longer one's (the ladder already ranked it lower)."""
    if not any(PARENT_ATTR in t.user_attrs for t in completed_trials(study)):
        return list(study.best_trials)
    budget, metric = study_budget(study), front_metric(study)
    feasible = [
        t
        for t in current_trials(study)
        if all(c <= 0.0 for c in t.constraints.values())  # as best_trials counts it
    ]

    def near(t: FrozenTrial) -> bool:
        ratio = trial_metric(t, metric)
        return budget is not None and ratio is not None and at_budget(ratio, budget, metric)

    top = max((rung_of(t) for t in feasible if near(t)), default=0)
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    rows = [
        (t, [sign * v for sign, v in zip(signs, t.values, strict=True)])
        for t in feasible
        if not near(t) or rung_of(t) == top
    ]
    return [
        t
        for t, a in rows
        if not any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for _, b in rows)
    ]


def at_budget(ratio: float, budget: float, metric: str = "macs_ratio") -> bool:
    """Whether a feasible trial's budgeted ratio counts as *at* the budget.

    A MACs ratio is projected onto the budget, so "at" means within :data:`AT_BUDGET` under it.
    A latency ratio is measured, not projected (trials land anywhere under the budget, and
    timing noise moves them), so every trial within the budget is at it.
    """
    if metric == "latency_ratio":
        return ratio <= budget + 1e-9
    return budget - AT_BUDGET <= ratio <= budget + 1e-9


def winner(front: list[FrontPoint], budget: float | None = None) -> FrontPoint:
    """The best policy at the budget: the highest val accuracy among front points at the
    budget (:func:`at_budget`; ties: the lower ratio) that reached the highest rung any of them
    reached (a figure of a shorter fine-tune never wins over a longer one's); the whole front's
    best when no point is at the budget, or when no budget is given.
    """
    if not front:
        raise UserError(
            "the study has no feasible completed trial yet: run more trials or raise the budget "
            "(--budget-flops, or --budget-latency)"
        )
    near = [p for p in front if budget is not None and at_budget(p.ratio(), budget, p.front_metric)]
    if near:
        top = max(p.rung for p in near)
        near = [p for p in near if p.rung == top]
    return max(near or front, key=lambda p: (p.val_accuracy, -p.ratio()))


def study_budget(study: optuna.Study) -> float | None:
    """The stored search's budget on its budgeted ratio: ``--budget-flops``, or with
    ``--objective latency`` ``--budget-latency`` (None for a study autoprune did not create)."""
    raw = study.user_attrs.get(CONFIG_ATTR) or {}
    budget = raw.get("budget_latency" if front_metric(study) == "latency_ratio" else "budget_flops")
    return float(budget) if isinstance(budget, (int, float)) else None


def baseline_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE baseline trials, in trial order: one per baseline, at the highest
    rung it reached."""
    return [t for t in current_trials(study) if t.user_attrs.get(BASELINE_ATTR)]


def waiting_baselines(study: optuna.Study) -> list[FrozenTrial]:
    """Baseline trials enqueued and not yet run."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if t.user_attrs.get(BASELINE_ATTR)
    ]


def best_searched(study: optuna.Study, budget: float) -> FrozenTrial | None:
    """The best feasible non-baseline COMPLETE trial at the budget, among those at the highest
    rung any of them reached (None when there is none)."""
    metric = front_metric(study)
    rows = [
        (t, ratio)
        for t in current_trials(study)
        if not t.user_attrs.get(BASELINE_ATTR)
        and (ratio := trial_metric(t, metric)) is not None
        and at_budget(ratio, budget, metric)
    ]
    top = max((rung_of(t) for t, _ in rows), default=0)
    rows = [row for row in rows if rung_of(row[0]) == top]
    best = max(rows, key=lambda row: (row[0].values[0], -row[1]), default=None)
    return best[0] if best else None


HYPERVOLUME_REFERENCE = (1.0, 0.1)  # (budgeted ratio, val accuracy): the base's cost, near chance


def hypervolume(
    points: list[tuple[float, float]], reference: tuple[float, float] = HYPERVOLUME_REFERENCE
) -> float:
    """The area a set of (ratio, accuracy) points dominates up to ``reference``: lower ratio
    and higher accuracy are better, so a point counts the rectangle between itself and
    (reference ratio, reference accuracy). Points outside it (costlier than the base, or below
    the reference accuracy) and non-finite ones add nothing.

    A front that reaches lower ratios at the same accuracy, or more accuracy at the same
    ratios, has a larger hypervolume: one figure for the whole trade-off, not only the winner.
    """
    ref_ratio, ref_acc = reference
    inside = sorted(
        (r, a)
        for r, a in points
        if math.isfinite(r) and math.isfinite(a) and r < ref_ratio and a > ref_acc
    )
    area, best = 0.0, ref_acc
    for i, (ratio, acc) in enumerate(inside):  # sweep by ratio: each strip to the next point
        best = max(best, acc)
        right = inside[i + 1][0] if i + 1 < len(inside) else ref_ratio
        area += (right - ratio) * (best - ref_acc)
    return area


def front_hypervolume(front: list[FrontPoint]) -> float:
    """:func:`hypervolume` of a feasible front in val accuracy against its budgeted ratio."""
    return hypervolume([(p.ratio(), p.val_accuracy) for p in front])


def proxy_spearman(study: optuna.Study) -> tuple[float, int] | None:
    """Spearman rank correlation of the proxy with fine-tuned val accuracy, and its sample size.

    Over the COMPLETE trials at the budget that carry both (every fine-tuned trial measures its
    proxy first): screening compares candidates at one target, and pooling targets would
    inflate the figure (proxy and accuracy both rise with MACs). Only candidates the proxy let
    through are fine-tuned, so this is the correlation among those; ladder rungs (longer
    fine-tunes of the same policies) are left out. None below three trials.
    """
    # Candidates are projected onto a MACs target (with a latency budget, the calibrated one).
    raw = study.user_attrs.get(CONFIG_ATTR) or {}
    config = SearchConfig.from_dict(raw) if raw else None
    target = config.target() if config is not None else None
    pairs = [
        (float(t.user_attrs["proxy_accuracy"]), float(t.values[0]))
        for t in completed_trials(study)
        if isinstance(t.user_attrs.get("proxy_accuracy"), (int, float))
        and rung_of(t) == 0
        and (target is None or (trial_metric(t, "macs_ratio") or 0.0) >= target - AT_BUDGET)
    ]
    if len(pairs) < 3:
        return None
    return spearman([p for p, _ in pairs], [v for _, v in pairs]), len(pairs)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when a side is constant."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")


PHASES = ("load", "project", "score", "prune", "screen", "finetune", "evaluate", "latency")


def timing_summary(study: optuna.Study) -> list[tuple[str, float, float, float]]:
    """Per phase (and ``overhead``): the median seconds per bracket, the median share of a
    bracket's wall time, and the share of all brackets' wall time.

    A bracket is a fine-tuned trial plus the candidates it was screened against; its phases
    are summed over its candidates. The first bracket of each worker also pays for loading
    the dataset and base model: the medians are robust to it, the total share includes it.
    """
    by_bracket: dict[int, dict[str, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        key = int(t.user_attrs.get("bracket", t.number))
        row = by_bracket.setdefault(key, {})
        for phase in PHASES:
            row[phase] = row.get(phase, 0.0) + float(
                (t.user_attrs.get("timings") or {}).get(phase, 0.0)
            )
        if "wall" in t.user_attrs:
            row["wall"] = float(t.user_attrs["wall"])
            row["overhead"] = float(t.user_attrs.get("overhead", 0.0))
    rows = [r for r in by_bracket.values() if r.get("wall", 0.0) > 0]
    if not rows:
        return []
    total = sum(r["wall"] for r in rows)
    return [
        (
            phase,
            statistics.median(r.get(phase, 0.0) for r in rows),
            statistics.median(r.get(phase, 0.0) / r["wall"] for r in rows),
            sum(r.get(phase, 0.0) for r in rows) / total,
        )
        for phase in (*PHASES, "overhead", "wall")
    ]


@dataclass
class StudySummary:
    """A row of ``autoprune studies``."""

    name: str
    budget: float | None  # the stored search's budget on its budgeted ratio (None: not autoprune's)
    objective: str  # macs | latency | both
    complete: int
    failed: int
    running: int
    front: int  # feasible Pareto-front size


def summaries(storage: optuna.storages.BaseStorage) -> list[StudySummary]:
    """Every study in ``storage``, by name, with its trial counts and front size."""
    rows = []
    for summary in sorted(
        optuna.get_all_study_summaries(storage, include_best_trial=False),
        key=lambda s: s.study_name,
    ):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = {
            state: len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
        }
        rows.append(
            StudySummary(
                name=summary.study_name,
                budget=study_budget(study),
                objective=objective_of(study),
                complete=counts[TrialState.COMPLETE],
                failed=counts[TrialState.FAIL],
                running=counts[TrialState.RUNNING],
                front=len(pareto_front(study)),
            )
        )
    return rows
