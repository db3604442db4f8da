"""Studies in SQL storage: open/create, stale-trial recovery, recording results, the Pareto front.

Every search is an Optuna study with directions ``[maximize val_accuracy, minimize macs_ratio]``
and the FLOPs budget as a constraint (``macs_ratio - budget <= 0``); with ``--objective latency``
the second objective and the constraint are the latency ratio instead, and with ``both`` the
study has three objectives (val accuracy, MACs ratio, latency ratio). The objectives are named
(``study.set_metric_names``), so Optuna's own tools show ``val_accuracy`` and ``macs_ratio``.
Each COMPLETE trial carries the **applied** policy (after budget projection and criterion
selection) in its :class:`~autoprune.records.TrialRecord`, so what is exported is exactly what
was measured. The search config is stored on the study (user attr ``autoprune.config``) so
``autoprune resume NAME`` needs only the name.

One concern per module, all re-exported here (``from autoprune import study as studies``):

* :mod:`.stored` — names, opening or creating a study, directions, metric names, the config;
* :mod:`.recovery` — which driver owns a RUNNING trial; re-queuing a dead driver's trials;
* :mod:`.recording` — telling a trial's or a bracket's outcome; complete and current trials;
* :mod:`.front` — the feasible front, at-budget, the winner, baselines, hypervolume;
* :mod:`.summary` — the proxy's Spearman, phase timings, one row per study;
* :mod:`._optuna` — the one place that reaches into Optuna's private parts.

A trial's own attributes are read and written only through :mod:`autoprune.records`.
"""

from __future__ import annotations

import optuna

from autoprune.config import directions_for
from autoprune.records import (
    BASELINE_ATTR,
    DRIVER_ATTR,
    EXPLORE_ATTR,
    PARENT_ATTR,
    RETRY_ATTR,
    RUNG_ATTR,
    TrialRecord,
)
from autoprune.storage import default_storage_url, open_storage
from autoprune.study._optuna import set_user_attrs, storage_of
from autoprune.study.front import (
    AT_BUDGET,
    HYPERVOLUME_REFERENCE,
    FrontPoint,
    at_budget,
    baseline_trials,
    best_searched,
    front_hypervolume,
    hypervolume,
    pareto_front,
    waiting_baselines,
    winner,
)
from autoprune.study.recording import (
    CONSTRAINT,
    CONSTRAINTS,
    complete_count,
    completed_trials,
    current_trials,
    finish_bracket,
    finish_trial,
    rung_of,
    trial_count,
    write_record,
)
from autoprune.study.recovery import driver_id, mark_driver, recover_stale_trials
from autoprune.study.stored import (
    CONFIG_ATTR,
    METRIC_NAMES,
    create_or_load,
    front_metric,
    has_config,
    load_config,
    load_study,
    metric_names,
    objective_of,
    save_config,
    search_config,
    stored_config,
    study_budget,
    study_name_for,
    study_names,
    trial_metric,
)
from autoprune.study.summary import (
    PHASES,
    StudySummary,
    proxy_spearman,
    spearman,
    summaries,
    timing_summary,
)

DIRECTIONS = directions_for("macs")  # the default objective's

optuna.logging.set_verbosity(optuna.logging.WARNING)

__all__ = [
    "AT_BUDGET",
    "BASELINE_ATTR",
    "CONFIG_ATTR",
    "CONSTRAINT",
    "CONSTRAINTS",
    "DIRECTIONS",
    "DRIVER_ATTR",
    "EXPLORE_ATTR",
    "HYPERVOLUME_REFERENCE",
    "METRIC_NAMES",
    "PARENT_ATTR",
    "PHASES",
    "RETRY_ATTR",
    "RUNG_ATTR",
    "FrontPoint",
    "StudySummary",
    "TrialRecord",
    "at_budget",
    "baseline_trials",
    "best_searched",
    "complete_count",
    "completed_trials",
    "create_or_load",
    "current_trials",
    "default_storage_url",
    "directions_for",
    "driver_id",
    "finish_bracket",
    "finish_trial",
    "front_hypervolume",
    "front_metric",
    "has_config",
    "hypervolume",
    "load_config",
    "load_study",
    "mark_driver",
    "metric_names",
    "objective_of",
    "open_storage",
    "pareto_front",
    "proxy_spearman",
    "recover_stale_trials",
    "rung_of",
    "save_config",
    "search_config",
    "set_user_attrs",
    "spearman",
    "storage_of",
    "stored_config",
    "study_budget",
    "study_name_for",
    "study_names",
    "summaries",
    "timing_summary",
    "trial_count",
    "trial_metric",
    "waiting_baselines",
    "winner",
    "write_record",
]  # fmt: skip
