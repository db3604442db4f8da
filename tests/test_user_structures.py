"""A user's own network through the CLI: the issue-18 network (separable blocks, squeeze-excite
gates of 1x1 convolutions, a concatenation) trains, searches, exports and replays.

Every trial there once failed: projection counted a group spread over the concatenated branches
as if each branch held all of its channels. The contract suite
(``test_projection_contract.py``) checks projection on every structure; this runs the search a
user runs, with ``--model structures:separable_se_concat`` and this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.cli import main
from autoprune.policy import Policy

HERE = Path(__file__).parent
MODEL = "structures:separable_se_concat"

SPACE = """\
schema: autoprune.space/1
granularity: group
rate: {low: 0.0, high: 0.8}
max_rate: 0.85
criteria: [l1, class_aware]
criterion_per: group
target_macs_ratio: {low: 0.3, explore: 0.5}
retrain: {epochs: [0.1], lr: {low: 0.02, high: 0.1, log: true}, regularizer: [none]}
iterative_steps: [1, 2]
class_threshold: {low: 1, high: 5}
depth: {max_blocks_per_stage: 0}
"""


@pytest.fixture
def user_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    sys.modules.pop("structures", None)
    return tmp_path


@pytest.mark.slow
def test_concat_se_network_searches_and_replays(
    user_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = user_path / "base.pt"
    assert main(["train", "--model", MODEL, "--dataset", "mnist5k", "--epochs", "1",
                 "--out", str(base)]) == 0  # fmt: skip
    space = user_path / "space.yaml"
    space.write_text(SPACE)
    db = user_path / "s.db"
    args = [
        "search", "--model", MODEL, "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--budget-flops", "0.5", "--trials", "4", "--space", str(space), "--executor", "local",
        "--storage", f"sqlite:///{db}", "--study", "u", "--quiet", "--cpus-per-trial", "1",
        "--screen", "2",
    ]  # fmt: skip
    assert main(args) == 0
    trials = optuna.load_study(study_name="u", storage=f"sqlite:///{db}").get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 0
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 4
    for t in complete:
        policy = Policy.from_dict(t.user_attrs["policy"])
        assert policy.target_macs_ratio is not None
        assert 0.0 <= policy.target_macs_ratio - t.values[1] <= 0.01

    exported = sorted((user_path / "policies" / "u").glob("trial-*.yaml"))
    assert exported
    capsys.readouterr()
    for path in exported:
        policy = Policy.load(path)
        out = user_path / f"{path.stem}.pt"
        assert main(["replay", str(path), "--epochs", "0", "--out", str(out)]) == 0
        from autoprune.checkpoint import load_checkpoint

        # replay refuses other channels (removed_sha256), and lands on the trial's MACs
        ratio = load_checkpoint(out).metrics["macs_ratio"]
        assert ratio == pytest.approx(policy.measured["macs_ratio"], abs=1e-6)


def test_out_of_reach_budget_stops_before_any_trial(
    user_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_rate 0.85 leaves the stem's image channels and the head's classes: 0.02 is too low."""
    db = user_path / "s.db"
    space = user_path / "space.yaml"
    space.write_text(SPACE.replace("low: 0.3", "low: 0.01"))
    args = [
        "search", "--model", MODEL, "--dataset", "mnist5k", "--budget-flops", "0.02",
        "--space", str(space),
        "--trials", "2", "--executor", "local", "--storage", f"sqlite:///{db}", "--study", "u",
        "--quiet", "--base-checkpoint", str(user_path / "base.pt"),
    ]  # fmt: skip
    # the checkpoint is read first: an untrained base is enough for the reachability check
    from autoprune.base import train_base

    train_base(MODEL, "mnist5k", 0.01, user_path / "base.pt", log=lambda _: None)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "MACs target 0.02 is out of reach" in err
    assert "Use a budget of at least" in err
    assert "Traceback" not in err
    # nothing was stored: the study does not exist
    assert not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")
