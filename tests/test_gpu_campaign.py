"""benchmarks/gpu_campaign.py, the prepared GPU run, on the CPU: its dry run must keep working
while no GPU is at hand, so the scarce GPU minutes are never spent on a script that rotted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CAMPAIGN = REPO / "benchmarks" / "gpu_campaign.py"


def load_campaign() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_campaign", CAMPAIGN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_campaign"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.ray
def test_the_dry_run_runs_every_stage_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # The campaign's temporary files go to a directory of their own, short enough for Ray's
    # socket paths (107 bytes at most), so that the test can see that none are left behind.
    scratch = Path(tempfile.mkdtemp(prefix="apc-"))
    try:
        proc = subprocess.run(
            [sys.executable, str(CAMPAIGN), "--dry-run", "--out", str(out), "--budget-s", "900"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        left = sorted(p.name for p in scratch.glob("campaign-home-*"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not left, f"the searches' homes are removed: {left}"
    results = json.loads((out / "campaign.json").read_text())
    stages = results["stages"]
    assert list(stages) == ["machine", "cuda_tests", "throughput", "autotune", "searches"]
    assert all(record["status"] == "ok" for record in stages.values()), stages

    tests = stages["cuda_tests"]
    assert tests["skipped"] >= 9 and tests["passed"] == tests["failed"] == 0, "skipped on a CPU"
    assert tests["collection_errors"] == 0

    rows = stages["throughput"]["rows"]
    cells = {(r["gpus_per_trial"], r["precision"], r["channels_last"]) for r in rows}
    assert cells == {(f, p, c) for f in (1.0, 0.5) for p in ("bf16", "fp32") for c in (0, 1)}
    for row in rows:
        assert row["trials"] == round(1 / row["gpus_per_trial"])
        assert 0 < row["images_per_s_per_trial"] <= row["images_per_s_total"]

    autotune = stages["autotune"]
    assert len(autotune["rows"]) == 2 and autotune["mean_plain_s"] > 0

    first = stages["searches"]["first_trial"]
    assert first["complete"] == 1 and first["failed"] == 0 and first["exit_code"] == 0
    assert first["first_s"] > 0 and {t["phase"] for t in first["timing"]} >= {"finetune", "wall"}
    assert (out / "searches.db").stat().st_size > 0, "the studies come back for `autoprune show`"

    table = (out / "table.txt").read_text()
    assert "CUDA tests: 0 passed, 0 failed" in table
    assert "img/s total" in table and "first-trial" in table
    assert table in (out / "campaign.log").read_text()


@pytest.mark.slow  # fresh interpreter: make test runs it
def test_the_real_run_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, str(CAMPAIGN), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failing_stage_is_recorded_and_the_next_stage_still_runs(tmp_path: Path) -> None:
    campaign_module = load_campaign()
    campaign = campaign_module.Campaign(tmp_path, budget_s=60)

    def broken(_seconds: float) -> dict[str, Any]:
        raise RuntimeError("no GPU here")

    campaign.stage("first", broken, 10)
    campaign.stage("second", lambda _s: {"value": 1}, 10)
    saved = json.loads((tmp_path / "campaign.json").read_text())["stages"]
    assert saved["first"]["status"] == "error" and "no GPU here" in saved["first"]["error"]
    assert saved["second"] == {"status": "ok", "value": 1, "wall_s": saved["second"]["wall_s"]}
    assert "stage first FAILED: RuntimeError: no GPU here" in campaign_module.final_table(
        {"sizes": {}, "stages": saved}
    )


def test_junit_counts_separates_modules_that_did_not_import(tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><failure message="boom"/></testcase>'
        '<testcase classname="t" name="c"><skipped message="no GPU"/></testcase>'
        '<testcase classname="" name="tests.test_x"><error message="collection failure"/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = load_campaign().junit_counts(report)
    assert counts == {"passed": 1, "failed": 1, "skipped": 1, "collection_errors": 1}
