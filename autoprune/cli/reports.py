"""What the reporting verbs (``studies``, ``show``, ``inspect``) say, as plain data.

Each ``*_report`` function returns dicts and lists of str, int, float, bool and None, and
:func:`render` turns one into the verb's output: ``--format table`` (rich tables, drawn by
:mod:`.tables` from the very same dict), ``json`` or ``yaml``. So a script reads exactly what
a person sees, and the keys are stable: a metric a trial did not measure is ``null``, never
missing. Only the data goes to stdout; logs and warnings go to stderr (Optuna's CLI does the same).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "yaml")
# The metrics a trial row states: accuracy, the ratios, the pruned model's latency.
TRIAL_METRICS = ("val_accuracy", "macs_ratio", "params_ratio", "latency_ratio", "latency_ms")


def render(data: Any, fmt: str, table: Callable[[Any], None]) -> None:
    """Print ``data`` on stdout as JSON or YAML, or hand it to ``table`` (``--format table``).

    Non-finite floats (a Spearman over constant values, an unmeasured ratio) become ``null``:
    JSON has no NaN, and a script should not have to special-case one.
    """
    if fmt == "table":
        table(data)
        return
    clean = _finite(data)
    if fmt == "json":
        print(json.dumps(clean, indent=2, allow_nan=False))
    elif fmt == "yaml":
        import yaml

        print(yaml.safe_dump(clean, sort_keys=False), end="")
    else:  # argparse's choices keep this out of reach of users
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- studies


def studies_report(storage: Any) -> list[dict[str, Any]]:
    """``autoprune studies``: one dict per study (the fields of :class:`~autoprune.study.StudySummary`)."""
    from autoprune import study as studies

    return [asdict(s) for s in studies.summaries(storage)]


# --------------------------------------------------------------------------- show


def study_report(
    study: Any, policies_dir: str | Path = "policies", timing: bool = False
) -> dict[str, Any]:
    """``autoprune show``: the study's front, baselines, winner, proxy and failures.

    Args:
        study: an autoprune study (a foreign two-objective study reads with defaults).
        policies_dir: the folder ``search``/``export`` write ``STUDY/`` in; each front point
            and baseline names the policy file it is exported to there, and whether it exists.
        timing: add ``timing`` (``show --timing``): per phase, the median seconds per
            fine-tuned trial and the shares of wall time.
    """
    from optuna.trial import TrialState

    from autoprune import study as studies
    from autoprune.export import policy_file_name
    from autoprune.records import TrialRecord

    def name_of(t: Any) -> str:
        return str(TrialRecord.from_trial(t).baseline)

    folder = Path(policies_dir) / study.study_name
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    front = studies.pareto_front(study)
    base = studies.baseline_trials(study)
    files = {p.number: folder / policy_file_name(p.number) for p in front}
    for t in base:
        files.setdefault(t.number, folder / policy_file_name(t, name_of(t)))
    metric = studies.front_metric(study)
    budget = studies.study_budget(study)
    raw_config = studies.has_config(study)
    counts = {
        name: len(study.get_trials(deepcopy=False, states=(state,)))
        for name, state in (
            ("complete", TrialState.COMPLETE),
            ("screened_out", TrialState.PRUNED),
            ("failed", TrialState.FAIL),
            ("running", TrialState.RUNNING),
            ("waiting", TrialState.WAITING),
        )
    }
    report: dict[str, Any] = {
        "study": study.study_name,
        "objective": studies.objective_of(study),
        "metric_names": studies.metric_names(study),
        "front_metric": metric,
        "budget": budget,
        "budgets": studies.search_config(study).budgets() if raw_config else {},
        "measures_latency": studies.objective_of(study) != "macs"
        or any(studies.trial_metric(t, "latency_ratio") is not None for t in base)
        or any(p.latency_ratio is not None for p in front),
        "trials": counts,
        "policies_dir": str(folder),
        "front": [trial_row(trials[p.number], files) for p in front],
        "baselines": [{"name": name_of(t), **trial_row(t, files)} for t in base],
        "winner": None,
        "best_searched": None,
        "best_baseline": None,
    }
    if front and budget is not None:
        best = studies.winner(front, budget)
        report["winner"] = {
            **trial_row(trials[best.number], files),
            "at_budget": studies.at_budget(best.ratio(), budget, best.front_metric),
        }
        searched = studies.best_searched(study, budget)
        if searched is not None:
            report["best_searched"] = trial_row(searched, files)
    if base:
        top = max(base, key=lambda t: (studies.rung_of(t), t.values[0]))  # highest rung first
        report["best_baseline"] = {
            "name": name_of(top),
            **trial_row(top, files),
        }
    report["hypervolume"] = {
        "value": studies.front_hypervolume(front),
        "reference": dict(
            zip((metric, "val_accuracy"), studies.HYPERVOLUME_REFERENCE, strict=True)
        ),
    }
    report["sensitivity_command"] = None
    used = any(t.params.get("prior") == "sensitivity" for t in trials.values()) or any(
        name_of(t).startswith("sensitivity") for t in base
    )
    stored = studies.search_config(study) if raw_config else None
    if used and stored is not None and stored.base_checkpoint:  # its prior's curves
        report["sensitivity_command"] = (
            f"autoprune sensitivity --base-checkpoint {stored.base_checkpoint} "
            f"--dataset {stored.dataset}"
        )
    rho = studies.proxy_spearman(study)
    report["proxy_spearman"] = None if rho is None else {"rho": rho[0], "trials": rho[1]}
    failed = [
        (t.number, TrialRecord.from_trial(t))
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    ]
    report["failed_trials"] = [
        {
            "trial": number,
            "kind": record.error_kind,
            "reason": _first_line(str(record.error or "no reason stored")),
        }
        for number, record in failed
    ]
    if timing:
        report["timing"] = [
            {"phase": phase, "median_s": median, "median_share": share, "total_share": total}
            for phase, median, share, total in studies.timing_summary(study)
        ]
    return report


def trial_row(trial: Any, files: dict[int, Path] | None = None) -> dict[str, Any]:
    """One finished trial: where it came from, its metrics, its policy and its exported file.

    ``files`` maps trial numbers to the policy file each is exported to; a trial not in it has
    ``policy_file: null``.
    """
    from autoprune import study as studies
    from autoprune.plots import criteria_counts
    from autoprune.records import TrialRecord

    record = TrialRecord.from_trial(trial)
    row: dict[str, Any] = {
        "trial": trial.number,
        "source": str(record.baseline or "searched"),
        # the ladder rung its figure was fine-tuned at (--rungs; 0: the search's own length)
        "rung": studies.rung_of(trial),
    }
    for name in TRIAL_METRICS:
        row[name] = studies.trial_metric(trial, name)
    row["proxy_accuracy"] = record.metric("proxy_accuracy")
    policy = record.applied_policy(trial.number)
    row["criteria"] = criteria_counts(policy) if policy else {}
    row["blocks_dropped"] = list(policy.depth.drop_blocks) if policy else []
    path = (files or {}).get(trial.number)
    row["policy_file"] = None if path is None else str(path)
    row["policy_file_exists"] = path is not None and path.is_file()
    return row


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


# --------------------------------------------------------------------------- inspect


def groups_report(
    spec: Any, macs: int, params: int, groups: list[Any], excluded: dict[str, str] | None = None
) -> dict[str, Any]:
    """``autoprune inspect``: the model, its MACs and parameters, its prunable groups, and the
    groups left unpruned because torch-pruning would break the model (``excluded``: why)."""
    return {
        "excluded": dict(excluded or {}),
        "model": spec.to_dict(),
        "macs": macs,
        "params": params,
        "groups": [
            {
                "name": g.name,
                "channels": g.channels,
                "macs_share": round(g.macs_share, 6),
                "layers": g.layers,
            }
            for g in groups
        ],
    }


def blocks_report(spec: Any, dataset: str, rows: list[Any]) -> dict[str, Any]:
    """``autoprune inspect --blocks``: each residual block's PLS-VIP score on ``dataset``."""
    return {
        "model": spec.to_dict(),
        "dataset": dataset,
        "blocks": [
            {
                "name": r.name,
                "score": float(r.score),
                "removable": bool(r.removable),
                "macs_share": float(r.macs_share),
            }
            for r in rows
        ],
    }
