"""TrialRecord is the one reader and writer of a trial's autoprune attributes: it round-trips
through Optuna's user attrs, keeps only what a worker's report should leave on a trial, and no
other module spells an attribute key or reads a trial's user attrs behind its back."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import optuna

import autoprune
from autoprune import study as studies
from autoprune.failures import Failure
from autoprune.records import _KEYS, MEASURED, TrialRecord

PACKAGE = Path(autoprune.__file__).parent
RECORDS = PACKAGE / "records.py"
# Modules that may touch ``.user_attrs``: the record itself; the study attr that holds the
# search config; the private writer that updates Optuna's cached trial after a bulk write.
USER_ATTRS_ALLOWED = {RECORDS, PACKAGE / "study" / "stored.py", PACKAGE / "study" / "_optuna.py"}


def _constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_a_record_round_trips_through_user_attrs_and_a_study() -> None:
    record = TrialRecord(
        baseline="uniform-l1", rung=2, promoted_from=7, macs_ratio=0.49, timings={"finetune": 1.5},
        policy={"model": {"name": "resnet20"}}, error=None,
    )  # fmt: skip
    attrs = record.to_attrs()
    assert attrs == {
        "autoprune.baseline": "uniform-l1", "autoprune.rung": 2, "autoprune.promoted_from": 7,
        "macs_ratio": 0.49, "timings": {"finetune": 1.5}, "policy": {"model": {"name": "resnet20"}},
    }  # fmt: skip
    assert TrialRecord.from_attrs({**attrs, "someone_elses": 1}) == record
    study = optuna.create_study()
    trial = study.ask()
    studies.write_record(study, trial, record)
    study.tell(trial, 0.5)
    frozen = study.trials[0]
    assert TrialRecord.from_trial(frozen) == record
    assert studies.rung_of(frozen) == record.level == 2 and record.is_promoted


def test_a_report_leaves_only_its_measurements_on_the_trial() -> None:
    report = {
        "val_accuracy": 0.9, "finetuned": True, "macs_ratio": 0.5, "proxy_accuracy": None,
        "latency_ms": 1.25, "candidates": [], "autoprune.baseline": "smuggled",
    }  # fmt: skip
    record = TrialRecord.from_report(report)
    assert record == TrialRecord(macs_ratio=0.5, latency_ms=1.25)
    assert record.metric("macs_ratio") == 0.5 and record.metric("proxy_accuracy") is None
    assert record.metric("baseline") is None  # only measurements are metrics


def test_a_failure_is_stored_and_read_back_through_the_record() -> None:
    failure = Failure("oom", "out of memory: run fewer trials at once", "frame 1")
    report = failure.report()
    assert Failure.is_in(report) and not Failure.is_in({"val_accuracy": 0.9})
    assert Failure.from_report(report) == failure
    assert TrialRecord.from_attrs(failure.attrs()).error_kind == "oom"


def test_no_module_reads_a_trials_user_attrs_but_the_record() -> None:
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in USER_ATTRS_ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "user_attrs":
                readers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not readers, f"read a trial through autoprune.records.TrialRecord instead: {readers}"


def test_no_module_spells_an_attribute_key_but_the_record() -> None:
    """The keys that are autoprune's own (namespaced, and the failure's kind) are written once;
    the measurement keys are the metrics' own names, used as such across the package."""
    own = set(_KEYS.values()) | {"error_kind", "traceback"}
    assert set(MEASURED) <= {f.name for f in fields(TrialRecord)}
    stray = [
        f"{path.relative_to(PACKAGE)}:{line} {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != RECORDS
        for line, value in _constants(path)
        if value in own
    ]
    assert not stray, f"spell these keys through autoprune.records: {stray}"
