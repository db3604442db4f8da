"""Successive halving over fine-tune length (``--rungs``): promotion bookkeeping, the winner's
rung, and a ladder that resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune import ladder
from autoprune import study as studies
from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.modelspec import ModelSpec
from autoprune.policy import Policy

POLICY = Policy(model=ModelSpec("resnet20", 10, (1, 28, 28)), groups={}).to_dict()


def _study(budget: float = 0.5) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(studies.CONFIG_ATTR, SearchConfig(budget_flops=budget).to_dict())
    return study


def _finish(study: optuna.Study, acc: float, ratio: float, **attrs: object) -> int:
    """Ask the next trial (a queued promotion first), record it like a search does."""
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("policy", POLICY)
    trial.set_constraint(studies.CONSTRAINT, ratio - 0.5)
    study.tell(trial, [acc, ratio])
    return trial.number


def test_the_best_third_climbs_each_rung_and_the_winner_comes_from_the_top() -> None:
    study = _study()
    accs = [0.90, 0.95, 0.80, 0.97, 0.85, 0.93, 0.70, 0.99, 0.60]
    for i, acc in enumerate(accs):
        _finish(study, acc, 0.5, **({studies.BASELINE_ATTR: "uniform-l1"} if i == 0 else {}))
    below = _finish(study, 0.75, 0.3)  # not at the budget: never promoted
    promotions = ladder.owed(study, rungs=3, eta=3)
    assert [(p.number, rung) for p, rung in promotions] == [(7, 1), (3, 1), (1, 1)]
    ladder.enqueue(study, promotions)
    assert ladder.owed(study, 3, 3) == []  # asked, not run: rung 2 waits for them
    assert len(ladder.waiting(study)) == 3

    # Rung 1 runs (longer fine-tunes; the best at rung 0 is not the best here).
    rung1 = {
        _finish(study, acc, 0.5): acc
        for acc in (0.975, 0.985, 0.96)  # children of 7, 3 and 1, in queue order
    }
    trials = {t.number: t for t in study.get_trials()}
    assert [trials[n].user_attrs[studies.PARENT_ATTR] for n in rung1] == [7, 3, 1]
    assert all(studies.rung_of(trials[n]) == 1 for n in rung1)
    current = {t.number for t in studies.current_trials(study)}
    assert not current & {7, 3, 1}, "a promoted trial's figure is superseded by its child's"

    ((top, rung),) = ladder.owed(study, 3, 3)
    assert rung == 2 and top.user_attrs[studies.PARENT_ATTR] == 3  # 0.985 at rung 1
    ladder.enqueue(study, [(top, rung)])
    final = _finish(study, 0.97, 0.5)  # below rung 1's 0.975 (trial 7's child)
    assert ladder.owed(study, 3, 3) == [] and ladder.waiting(study) == []

    # The winner at the budget is the rung-2 trial, though rung 1 holds a higher figure (and
    # rung 0 higher ones still): at the budget the front holds the top rung only.
    front = studies.pareto_front(study)
    best = studies.winner(front, 0.5)
    assert best.number == final and best.rung == 2
    assert [(p.number, p.rung) for p in front] == [(below, 0), (final, 2)]
    searched = studies.best_searched(study, 0.5)
    assert searched is not None and searched.number == final


def test_a_promoted_baseline_stays_that_baseline_once() -> None:
    study = _study()
    _finish(study, 0.99, 0.5, **{studies.BASELINE_ATTR: "uniform-l1"})
    _finish(study, 0.90, 0.5)
    promotions = ladder.owed(study, rungs=2, eta=2)
    assert [p.number for p, _ in promotions] == [0]
    ladder.enqueue(study, promotions)
    child = _finish(study, 0.991, 0.5)
    base = studies.baseline_trials(study)
    assert [t.number for t in base] == [child]
    assert base[0].user_attrs[studies.BASELINE_ATTR] == "uniform-l1"
    # No searched trial reached rung 1: the best searched one is the best at its own top rung.
    searched = studies.best_searched(study, 0.5)
    assert searched is not None and searched.number == 1


def test_a_failed_promotion_is_not_asked_again() -> None:
    study = _study()
    for acc in (0.9, 0.8, 0.7):
        _finish(study, acc, 0.5)
    ladder.enqueue(study, ladder.owed(study, rungs=2, eta=3))
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, state=TrialState.FAIL)
    assert ladder.owed(study, 2, 3) == []


@pytest.mark.parametrize(("flag", "value"), [("--rungs", "0"), ("--rungs", "9"), ("--eta", "1")])
def test_bad_ladder_settings_say_the_range(flag: str, value: str) -> None:
    config = SearchConfig(**{flag[2:]: int(value)})
    with pytest.raises(UserError, match=flag):
        config.validate()


# --------------------------------------------------------------------------- end to end


def _search(base: Path, db: Path, *extra: str) -> list[str]:
    return [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--trials", "3", "--baselines", "none", "--executor", "local", "--storage", f"sqlite:///{db}", "--study", "q",
        "--quiet", "--cpus-per-trial", "1", "--space", FAST_SPACE, "--screen", "1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_search_climbs_its_ladder_and_resumes_it_without_repeating_a_rung(
    trained_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "s.db"
    assert main(_search(trained_base, db, "--rungs", "2", "--eta", "2")) == 0
    study = optuna.load_study(study_name="q", storage=f"sqlite:///{db}")
    done = studies.completed_trials(study)
    rung1 = [t for t in done if studies.rung_of(t) == 1]
    pool = [t for t in done if studies.rung_of(t) == 0 and ladder._at_budget(study, t)]
    assert len(rung1) == -(-len(pool) // 2) >= 1
    for t in rung1:  # the parent's params, twice its epochs
        parent = study.trials[t.user_attrs[studies.PARENT_ATTR]]
        assert t.params == parent.params
        assert t.user_attrs["policy"]["retrain"]["epochs"] == pytest.approx(
            2 * parent.user_attrs["policy"]["retrain"]["epochs"]
        )

    # Stopped after asking rung 2 (queued, not run): the same search with --rungs 3 runs that
    # one promotion and no other; finished rungs are not run again.
    ladder.enqueue(study, ladder.owed(study, rungs=3, eta=2))
    assert len(ladder.waiting(study)) == 1
    assert main(_search(trained_base, db, "--rungs", "3", "--eta", "2")) == 0
    done = studies.completed_trials(study)
    assert len([t for t in done if studies.rung_of(t) == 1]) == len(rung1)
    assert len([t for t in done if studies.rung_of(t) == 2]) == 1
    assert ladder.waiting(study) == []

    capsys.readouterr()
    assert main(["show", "q", "--storage", f"sqlite:///{db}", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["winner"]["rung"] == 2
    assert all("rung" in row for row in report["front"])
