"""Studies as stored: names, opening or creating one, its directions and metric names, and
the search config kept on it (so ``autoprune resume NAME`` needs only the name)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autoprune.config import SearchConfig, front_metric_of
from autoprune.data import canonical_name
from autoprune.errors import UserError
from autoprune.records import TrialRecord
from autoprune.study._optuna import cache_metric_names, cached_metric_names

METRIC_NAMES = ["val_accuracy", "macs_ratio"]  # the default objective's (``--objective macs``)
CONFIG_ATTR = "autoprune.config"  # a study attr (not a trial's): the search's SearchConfig


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
        directions=config.directions(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(config.metric_names())
    return study


def _check_directions(study: optuna.Study, config: SearchConfig) -> None:
    directions = [d.name.lower() for d in study.directions]
    wanted = config.directions()
    if directions != wanted:
        raise UserError(
            f"study '{study.study_name}' exists with directions {directions}, not {wanted} "
            f"(--objective {config.objective}): it is another objective's study or not an "
            "autoprune study; choose another --study name"
        )


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objective names (``val_accuracy``, ``macs_ratio``, maybe ``latency_ratio``)."""
    names = cached_metric_names(study)
    if names is None:
        names = list(study.metric_names or METRIC_NAMES)
        cache_metric_names(study, names)
    return names


def search_config(study: optuna.Study) -> SearchConfig:
    """The stored search's config (defaults for a study autoprune did not create)."""
    return SearchConfig.from_dict(study.user_attrs.get(CONFIG_ATTR) or {})


def has_config(study: optuna.Study) -> bool:
    """Whether the study stores a search config (``autoprune search`` made it)."""
    return bool(study.user_attrs.get(CONFIG_ATTR))


def objective_of(study: optuna.Study) -> str:
    """``macs``, ``latency`` or ``both``: what the study trades val accuracy against."""
    return str((study.user_attrs.get(CONFIG_ATTR) or {}).get("objective", "macs"))


def front_metric(study: optuna.Study) -> str:
    """The ratio the study's budget bounds, its front is ordered by and its winner picked by."""
    return front_metric_of(objective_of(study))


def study_budget(study: optuna.Study) -> float | None:
    """The stored search's budget on its budgeted ratio: ``--budget-flops``, or with
    ``--objective latency`` ``--budget-latency`` (None for a study autoprune did not create)."""
    raw = study.user_attrs.get(CONFIG_ATTR) or {}
    budget = raw.get("budget_latency" if front_metric(study) == "latency_ratio" else "budget_flops")
    return float(budget) if isinstance(budget, (int, float)) else None


def trial_metric(trial: FrozenTrial, name: str) -> float | None:
    """A finished trial's ``val_accuracy``, ``macs_ratio``, ``latency_ratio`` or
    ``params_ratio`` (None when it has none, e.g. no latency measured)."""
    if name == "val_accuracy":
        return float(trial.values[0]) if trial.values else None
    value = TrialRecord.from_trial(trial).metric(name)
    if value is None and name == "macs_ratio" and trial.values and len(trial.values) == 2:
        value = float(trial.values[1])  # studies from before the ratio was stored as a user attr
    return value


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
