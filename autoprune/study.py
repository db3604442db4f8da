"""Studies in SQL storage: open/create, stale-trial recovery, recording results, the Pareto front.

Every search is an Optuna study with directions ``[maximize val_accuracy, minimize macs_ratio]``
and the FLOPs budget as a constraint (``macs_ratio - budget <= 0``). Each COMPLETE trial carries
the **applied** policy (after budget projection and criterion selection) as the user attr
``policy``, so what is exported is exactly what was measured. The search config is stored on
the study (user attr ``autoprune.config``) so ``autoprune resume NAME`` needs only the name.
"""

from __future__ import annotations

import json
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.base import studies_dir
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.policy import Policy

DIRECTIONS: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]
METRIC_NAMES = ["val_accuracy", "macs_ratio"]
CONFIG_ATTR = "autoprune.config"
DRIVER_ATTR = "autoprune.driver"
CONSTRAINT = "macs_budget"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage_url() -> str:
    return f"sqlite:///{studies_dir() / 'autoprune.db'}"


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for a SQLAlchemy URL (default: SQLite under studies/).

    Raises:
        UserError: the URL is malformed, its driver is missing, or the database cannot be opened.
    """
    url = url or default_storage_url()
    if url.startswith("sqlite:///"):
        db_path = Path(url[len("sqlite:///") :])
        if url == default_storage_url():
            db_path.parent.mkdir(parents=True, exist_ok=True)
        elif str(db_path) not in ("", ":memory:") and not db_path.parent.is_dir():
            raise UserError(
                f"--storage {url}: folder {db_path.parent} does not exist; create it or fix the path"
            )
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except ImportError as exc:
        raise UserError(
            f"--storage {url}: the database driver is not installed ({exc}); for PostgreSQL install autoprune[postgres]"
        ) from exc
    except Exception as exc:
        raise UserError(
            f"--storage {url} cannot be opened: {type(exc).__name__}: {exc}".split("\n")[0]
        ) from exc


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def study_name_for(config: SearchConfig) -> str:
    """Default study name: one study per (model, dataset, space, budget)."""
    if config.study:
        return config.study
    space = Path(config.space).stem
    dataset = config.dataset
    if dataset.startswith("imagefolder:"):  # the folder's name, not its whole absolute path
        dataset = "imagefolder-" + Path(dataset.split(":", 1)[1]).name
    return f"{config.model}-{dataset}-{space}-b{config.budget_flops:g}".replace("/", "_").replace(
        ":", "_"
    )


def create_or_load(
    storage: optuna.storages.BaseStorage, name: str, config: SearchConfig, sampler: Any
) -> optuna.Study:
    """Open the study ``name`` or create it; check a stored study matches this search."""
    existing = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        directions = [d.name.lower() for d in study.directions]
        if directions != DIRECTIONS:
            raise UserError(
                f"study '{name}' exists with directions {directions}, not {DIRECTIONS}: it is not an autoprune study; "
                "choose another --study name"
            )
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None:
            _check_same_search(name, SearchConfig.from_dict(stored), config)
        return study
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, directions=DIRECTIONS
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRIC_NAMES)
    return study


def _check_same_search(name: str, stored: SearchConfig, config: SearchConfig) -> None:
    from autoprune.data import canonical_name

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


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    names = sorted(
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    )
    if name not in names:
        raise UserError(
            f"no study named '{name}' in this storage; existing: {', '.join(names) or 'none'} (see `autoprune studies`)"
        )
    return optuna.load_study(study_name=name, storage=storage)


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
        study._storage.set_trial_user_attr(
            trial._trial_id, "error", "driver died while the trial ran; re-enqueued"
        )
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"autoprune.retry_of": trial.number})
        recovered += 1
    if recovered:
        log(
            f"recovered {recovered} trial(s) left RUNNING by a crashed search: marked FAIL and re-enqueued"
        )
    return recovered


def complete_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def finish_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    result: dict[str, Any] | None,
    budget: float,
    error: str | None = None,
) -> TrialState:
    """Record one trial's outcome: constraint + user attrs + tell. Never leaves it RUNNING.

    Missing or non-finite metrics and errors become FAIL with the reason in user attr ``error``.
    """
    values = None
    if result and error is None:
        raw = [result.get(m) for m in METRIC_NAMES]
        if all(isinstance(v, (int, float)) and math.isfinite(float(v)) for v in raw):
            values = [float(v) for v in raw]  # type: ignore[arg-type]
        else:
            error = f"missing or non-finite metrics: {dict(zip(METRIC_NAMES, raw, strict=True))}"
    if result:
        for key in ("policy", "timings", "params_ratio", "macs", "params", "val_loss", "counters"):
            if key in result:
                trial.set_user_attr(key, _jsonable(result[key]))
        if "error" in result and error is None:
            error = str(result["error"])
    if values is None:
        trial.set_user_attr("error", error or "the trial reported no result")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    trial.set_constraint(CONSTRAINT, values[1] - budget)
    study.tell(trial, values)
    return TrialState.COMPLETE


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=float))


# --------------------------------------------------------------------------- front


@dataclass
class FrontPoint:
    number: int  # trial number
    val_accuracy: float
    macs_ratio: float
    params_ratio: float
    policy: Policy


def is_feasible(trial: FrozenTrial) -> bool:
    """A trial meets the budget when every constraint value is <= 0."""
    return bool(trial.constraints) and all(v <= 0 for v in trial.constraints.values())


def pareto_front(study: optuna.Study) -> list[FrontPoint]:
    """The feasible Pareto front, by ascending MACs ratio."""
    points = []
    for t in study.best_trials:
        if "policy" not in t.user_attrs:
            continue
        points.append(
            FrontPoint(
                number=t.number,
                val_accuracy=float(t.values[0]),
                macs_ratio=float(t.values[1]),
                params_ratio=float(t.user_attrs.get("params_ratio", float("nan"))),
                policy=Policy.from_dict(t.user_attrs["policy"], source=f"trial {t.number}"),
            )
        )
    return sorted(points, key=lambda p: (p.macs_ratio, -p.val_accuracy))


def winner(front: list[FrontPoint]) -> FrontPoint:
    """The front point with the highest val accuracy (ties: lower MACs)."""
    if not front:
        raise UserError(
            "the study has no feasible completed trial yet: run more trials or raise --budget-flops"
        )
    return max(front, key=lambda p: (p.val_accuracy, -p.macs_ratio))


def export_front(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Write every feasible front policy (with its measured metrics) as YAML, plus a summary and a plot."""
    front = pareto_front(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("trial-*.yaml"):
        stale.unlink(missing_ok=True)  # another driver of a shared study may export at once
    written = []
    for point in front:
        path = out_dir / f"trial-{point.number:04d}.yaml"
        point.policy.save(path)
        written.append(path)
    summary = {
        "study": study.study_name,
        "front": [
            {"file": f"trial-{p.number:04d}.yaml", "trial": p.number, "val_accuracy": round(p.val_accuracy, 6),
             "macs_ratio": round(p.macs_ratio, 6), "params_ratio": round(p.params_ratio, 6)}
            for p in front
        ],
    }  # fmt: skip
    import yaml

    tmp = out_dir / f".front.yaml.{os.getpid()}.tmp"
    tmp.write_text(yaml.safe_dump(summary, sort_keys=False))
    os.replace(tmp, out_dir / "front.yaml")
    plot_front(study, out_dir / "front.png")
    return written


def plot_front(study: optuna.Study, path: Path) -> None:
    """Accuracy vs MACs ratio of every completed trial, the feasible front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {p.number for p in pareto_front(study)}
    config = study.user_attrs.get(CONFIG_ATTR, {})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    others = [t for t in trials if t.number not in front]
    ax.scatter(
        [t.values[1] for t in others], [t.values[0] for t in others], s=18, c="0.6", label="trials"
    )
    pts = sorted((t for t in trials if t.number in front), key=lambda t: t.values[1])
    ax.plot(
        [t.values[1] for t in pts],
        [t.values[0] for t in pts],
        "o-",
        c="C3",
        label="feasible Pareto front",
    )
    if "budget_flops" in config:
        ax.axvline(
            config["budget_flops"], ls="--", c="C0", label=f"budget {config['budget_flops']:g}"
        )
    ax.set_xlabel("MACs ratio (pruned / base)")
    ax.set_ylabel("val accuracy")
    ax.set_title(study.study_name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp)
    os.replace(tmp, path)
    plt.close(fig)
