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

from autoprune.evaluate import Metrics, ObjectiveConfig, evaluate_bracket
from autoprune.failures import Failure, classify
from autoprune.policy import Policy
from autoprune.records import TrialRecord

JSON_SUFFIX = "_json"  # a report's field that holds JSON (Tune carries flat numbers and strings)
CANDIDATES = "candidates"  # a bracket's report: every candidate's report, in order


def encode(metrics: Metrics) -> dict[str, Any]:
    """What a trial reports: its objectives, whether it was fine-tuned, and what its record
    keeps (:class:`~autoprune.records.TrialRecord`), flat: a field that is a dict (the applied
    policy, the timings, the counters) travels as a JSON string under ``NAME_json``."""
    latency = metrics.latency
    record = TrialRecord(
        policy=metrics.policy.to_dict(),
        timings=metrics.timings,
        counters=metrics.counters,
        macs_ratio=metrics.macs_ratio,
        params_ratio=metrics.params_ratio,
        macs=metrics.macs,
        params=metrics.params,
        val_loss=metrics.val_loss,
        proxy_accuracy=metrics.proxy.accuracy if metrics.proxy else None,
        proxy_loss=metrics.proxy.loss if metrics.proxy else None,
        latency_ms=latency.ms if latency else None,
        base_latency_ms=latency.base_ms if latency else None,
        latency_ratio=latency.ratio if latency else None,
        latency_device=latency.device if latency else None,
    )
    report: dict[str, Any] = {"val_accuracy": metrics.val_accuracy, "finetuned": metrics.finetuned}
    for key, value in record.to_attrs().items():
        if isinstance(value, dict):
            report[key + JSON_SUFFIX] = json.dumps(value)
        else:
            report[key] = value
    return report


def decode(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The driver's view of a report: its ``NAME_json`` fields parsed back into ``NAME``."""
    if not result:
        return result
    out = dict(result)
    for key in [k for k in out if k.endswith(JSON_SUFFIX)]:
        value = json.loads(out.pop(key))
        if key == CANDIDATES + JSON_SUFFIX:  # every candidate's own report
            value = [decode(c) for c in value]
        out[key.removesuffix(JSON_SUFFIX)] = value
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
    return {**top, CANDIDATES + JSON_SUFFIX: json.dumps(reports)}
