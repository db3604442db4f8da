"""A trial's report: what a worker sends back to the driver, and how the driver reads it.

Ray Tune carries results as flat dicts of numbers and strings, so the applied policy, the
timings and the counters travel as JSON strings and are decoded on the driver. A candidate
that failed (a user-caused problem, a bug, a diverged fine-tune, out of memory) is reported as
its :meth:`~autoprune.failures.Failure.report` (``error``, ``error_kind``, maybe
``traceback``), so the trial ends FAIL with that reason while the search goes on.
"""

from __future__ import annotations

import json
from typing import Any

from autoprune.failures import Failure, classify
from autoprune.objective import Metrics, ObjectiveConfig, evaluate_bracket
from autoprune.policy import Policy


def encode(metrics: Metrics) -> dict[str, Any]:
    """What a trial reports: flat numbers, plus the applied policy and timings as JSON strings."""
    return {
        "val_accuracy": metrics.val_accuracy,
        "macs_ratio": metrics.macs_ratio,
        "params_ratio": metrics.params_ratio,
        "macs": metrics.macs,
        "params": metrics.params,
        "val_loss": metrics.val_loss,
        "policy_json": json.dumps(metrics.policy.to_dict()),
        "timings_json": json.dumps(metrics.timings),
        "counters_json": json.dumps(metrics.counters),
        "finetuned": metrics.finetuned,
        "proxy_accuracy": metrics.proxy.accuracy if metrics.proxy else None,
        "proxy_loss": metrics.proxy.loss if metrics.proxy else None,
        **(
            {
                "latency_ms": metrics.latency.ms,
                "base_latency_ms": metrics.latency.base_ms,
                "latency_ratio": metrics.latency.ratio,
                "latency_device": metrics.latency.device,
            }
            if metrics.latency is not None
            else {}
        ),
    }


def decode(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The driver's view of a report: JSON fields parsed back (``policy``, ``timings``, ...)."""
    if not result:
        return result
    out = dict(result)
    if "candidates_json" in out:
        out["candidates"] = [decode(c) for c in json.loads(out.pop("candidates_json"))]
    for key in ("policy", "timings", "counters"):
        raw = out.pop(f"{key}_json", None)
        if raw is not None:
            out[key] = json.loads(raw)
    return out


def evaluate_bracket_for_trial(
    objective: ObjectiveConfig,
    policy_dicts: list[dict[str, Any]],
    keep: int = 1,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Screen a bracket of candidates and fine-tune the best ``keep`` (see ``evaluate_bracket``).

    Reports the fine-tuned candidate's metrics at the top level (what Tune sees) and every
    candidate's report, in order, under ``candidates_json``. Never raises for a failure of the
    evaluation: a failed candidate is reported as its failure, and a failure outside any one
    candidate (e.g. a policy that does not parse) as every candidate's, so the worker lives on
    and the driver records each trial once. ``extra`` (e.g. the Ray node) joins every report.
    """
    outcomes: list[Metrics | Failure]
    try:
        policies = [Policy.from_dict(p) for p in policy_dicts]
        outcomes = list(evaluate_bracket(objective, policies, keep))
    except Exception as exc:  # recorded as every candidate's failure
        outcomes = [classify(exc, "evaluation")] * len(policy_dicts)
    reports = [
        {**(o.report() if isinstance(o, Failure) else encode(o)), **(extra or {})} for o in outcomes
    ]
    top = next((r for r in reports if r.get("finetuned")), reports[0])
    # ``top`` carries the metrics Tune requires (NaN when every candidate failed).
    return {**top, "candidates_json": json.dumps(reports)}
