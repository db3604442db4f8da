"""The peer adapters of benchmarks/peers.py on a tiny network, and the benchmark's report.

Each peer must hand back a model under the MACs budget (by autoprune's counter) that autoprune's
own fine-tune and evaluation accept. The libraries come with the ``peers`` extra, which CI
installs; without it these tests are skipped and say which import failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.data.splits import TensorSplit
from autoprune.macs import count_macs_params
from autoprune.policy import Retrain
from autoprune.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers
import peers_vs_search

MISSING = peers.missing()
CPU = torch.device("cpu")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def images(count: int, seed: int) -> TensorSplit:
    generator = torch.Generator().manual_seed(seed)
    return TensorSplit(
        torch.randn(count, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (count,), generator=generator),
    )


def accepted(model: nn.Module, budget: float, base_macs: int) -> None:
    """Under the budget by our counter, and our fine-tune and evaluation run on it."""
    example = torch.zeros(1, 1, 8, 8)
    assert count_macs_params(model, example)[0] <= budget * base_macs
    fit(model, images(64, 1), TrainConfig(Retrain(epochs=1, lr=0.01), batch_size=32), CPU)
    result = evaluate(model, images(40, 2), CPU)
    assert result.samples == 40 and 0.0 <= result.accuracy <= 1.0
    assert torch.isfinite(torch.tensor(result.loss))


@pytest.mark.skipif("torch-pruning" in MISSING, reason=MISSING.get("torch-pruning", ""))
@pytest.mark.parametrize("importance", peers.TP_IMPORTANCES)
def test_torch_pruning_global_lands_under_the_budget_and_fine_tunes(importance: str) -> None:
    model = tiny()
    example = torch.zeros(1, 1, 8, 8)
    base_macs = count_macs_params(model, example)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = peers.torch_pruning_global(
        model, example, 0.4, importance=importance, calibration=images(128, 0), steps=3
    )
    assert 0.4 - 0.05 <= result.macs_ratio <= 0.4  # bisected onto the budget, not far below
    assert result.detail["iterative_steps"] == 3 and 0 < result.detail["pruning_ratio"] < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy pruned
    accepted(result.model, 0.4, base_macs)


@pytest.mark.skipif("torch-pruning" in MISSING, reason=MISSING.get("torch-pruning", ""))
def test_torch_pruning_says_why_when_the_budget_is_out_of_its_reach() -> None:
    with pytest.raises(peers.PeerUnavailable, match=r"above the budget 0\.001"):
        peers.torch_pruning_global(tiny(), torch.zeros(1, 1, 8, 8), 0.001, max_pruning_ratio=0.5)


@pytest.mark.skipif("fastnas" in MISSING, reason=MISSING.get("fastnas", ""))
@pytest.mark.slow  # ModelOpt's search, run by ModelOpt: make test runs it
def test_fastnas_lands_under_the_budget_and_fine_tunes(tmp_path: Path) -> None:
    model = tiny()
    example = torch.zeros(1, 1, 8, 8)
    base_macs = count_macs_params(model, example)[0]
    checkpoint = tmp_path / "fastnas.pth"
    result = peers.fastnas(
        model, example, 0.5, train=images(400, 0), score=images(64, 3), checkpoint=checkpoint,
        batch_size=8,
    )  # fmt: skip
    assert result.macs_ratio <= 0.5
    assert checkpoint.exists()  # the sensitivity map a later budget reuses
    assert not [m for m in result.model.modules() if "modelopt" in type(m).__module__]
    accepted(result.model, 0.5, base_macs)
    # A second budget of the same model reuses the map and still lands under its budget.
    again = peers.fastnas(
        model, example, 0.3, train=images(400, 0), score=images(64, 3), checkpoint=checkpoint,
        batch_size=8,
    )  # fmt: skip
    assert again.macs_ratio <= 0.3


@pytest.mark.skipif("fastnas" in MISSING, reason=MISSING.get("fastnas", ""))
@pytest.mark.slow  # ModelOpt converts and profiles the model (seconds): make test runs it
@pytest.mark.parametrize(
    ("divisor", "verdict"),
    [
        (8, "NOT all constraints can be satisfied"),  # a profiling report ending in its verdict
        (32, "does not contain any configurable hyperparameters"),  # no width left to search
    ],
)
def test_fastnas_that_cannot_search_says_why_in_one_line(divisor: int, verdict: str) -> None:
    with pytest.raises(peers.PeerUnavailable) as raised:
        peers.fastnas(
            tiny(), torch.zeros(1, 1, 8, 8), 0.01, train=images(64, 0), score=images(8, 3),
            batch_size=8, divisor=divisor,
        )  # fmt: skip
    message = str(raised.value)
    assert message.startswith(f"FastNAS (channel_divisor {divisor}): ") and "\n" not in message
    assert verdict in message


def _row(method: str, seed: int, acc: float, **extra: object) -> dict:
    return {
        "network": "resnet20", "budget": 0.3, "seed": seed, "method": method, "kind": "x",
        "test_images": 10000, "test_accuracy": acc, "val_accuracy": acc, "macs_ratio": 0.3,
        "select_wall_s": 10.0, "select_epochs": 0.1, "finetune_wall_s": 5.0,
        "finetune_epochs": 0.5, **extra,
    }  # fmt: skip


def test_report_pairs_margins_by_seed_and_names_what_could_not_run(tmp_path: Path) -> None:
    rows = [
        _row("uniform-l1", 0, 0.80), _row("uniform-l1", 1, 0.90),
        _row(peers_vs_search.SEARCHED, 0, 0.82), _row(peers_vs_search.SEARCHED, 1, 0.93),
        {"network": "resnet20", "budget": 0.3, "seed": 0, "method": "FastNAS (ModelOpt)",
         "kind": "fastnas", "test_images": 10000, "status": "FastNAS: no subnet under 30%"},
    ]  # fmt: skip
    _header, lines = peers_vs_search.table(rows, "resnet20", 0.3)
    by_method = {line[0]: line for line in lines}
    # paired: differences 2 and 3 points -> 2.50 ± 0.50, though the unpaired spread is 5 points
    assert by_method["uniform-l1"][2] == "+2.50 ± 0.50"
    assert by_method["uniform-l1"][1] == "0.8500 ± 0.0500"
    assert "no subnet under 30%" in by_method["FastNAS (ModelOpt)"][1]
    assert lines[-1][0] == peers_vs_search.SEARCHED and lines[-1][2] == "—"
    meta = {"command": "c", "profile": "cpu", "date": "d", "machine": "m", "torch": "t",
            "settings": {"replay_epochs": 0.5}}  # fmt: skip
    doc = tmp_path / "benchmarks.md"
    peers_vs_search.write_markdown(rows, meta, doc, tmp_path / "images")
    text = doc.read_text()
    assert "| uniform-l1 | 0.8500 ± 0.0500 | +2.50 ± 0.50 |" in text
    assert (tmp_path / "images" / "resnet20-b0.3.png").read_bytes()[:4] == b"\x89PNG"


def _results(path: Path, seed: int, profile: str = "cpu", commit: str = "abc") -> Path:
    rows = [_row("uniform-l1", seed, 0.80 + seed / 100), _row(peers_vs_search.SEARCHED, seed, 0.9)]
    meta = {"command": "c", "profile": profile, "date": "d", "machine": "m", "torch": "t",
            "commit": commit, "settings": {"replay_epochs": 0.3}}  # fmt: skip
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return path


def test_report_joins_seeds_run_in_separate_sessions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _results(tmp_path / "a.json", 0), _results(tmp_path / "b.json", 1, commit="def")
    rows, meta = peers_vs_search.read_results([first, second])
    assert sorted(r["seed"] for r in rows) == [0, 0, 1, 1] and meta["commit"] == "abc + def"
    docs = tmp_path / "benchmarks.md"
    args = ["--report", str(first), str(second), "--docs", str(docs)]
    assert peers_vs_search.main([*args, "--images", str(tmp_path / "img")]) == 0
    # paired over both files' seeds: margins 10 and 9 points
    assert "| uniform-l1 | 0.8050 ± 0.0050 | +9.50 ± 0.50 |" in docs.read_text()
    capsys.readouterr()
    # the same seed twice is refused, naming both files; nothing is written
    docs.unlink()
    again = _results(tmp_path / "c.json", 1)
    assert peers_vs_search.main(["--report", str(second), str(again), "--docs", str(docs)]) == 2
    err = capsys.readouterr().err
    assert f"{again} and {second} both hold uniform-l1 on resnet20 at B 0.3, seed 1" in err
    assert len(err.strip().splitlines()) == 1 and not docs.exists()


def test_report_of_another_profile_prints_and_leaves_the_docs_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/benchmarks.md holds the cpu profile's tables; a GPU cell's report only prints."""
    cell = _results(tmp_path / "gpu.json", 0, profile="gpu-mobilenetv2")
    docs = tmp_path / "benchmarks.md"
    assert peers_vs_search.main(["--report", str(cell), "--docs", str(docs)]) == 0
    assert "uniform-l1" in capsys.readouterr().out and not docs.exists()
    other = _results(tmp_path / "cpu.json", 1)
    assert peers_vs_search.main(["--report", str(cell), str(other), "--docs", str(docs)]) == 2
    assert "report one profile at a time" in capsys.readouterr().err


def test_a_table_lists_hand_written_policies_then_peers_then_autoprune() -> None:
    made = [
        ("autoprune (searched, no ladder)", "searched"), ("uniform-l1", "uniform"),
        ("FastNAS (ModelOpt)", "fastnas"), ("global-l1", "global"),
        ("torch-pruning global (magnitude)", "torch-pruning"), ("uniform-fpgm", "uniform"),
        ("sensitivity-l1", "sensitivity"), (peers_vs_search.SEARCHED, "searched"),
    ]  # fmt: skip
    rows = [_row(method, 0, 0.9, kind=kind) for method, kind in made]
    _header, lines = peers_vs_search.table(rows, "resnet20", 0.3)
    assert [line[0] for line in lines] == [
        "uniform-l1", "uniform-fpgm", "global-l1", "sensitivity-l1",
        "torch-pruning global (magnitude)", "FastNAS (ModelOpt)",
        "autoprune (searched, no ladder)", peers_vs_search.SEARCHED,
    ]  # fmt: skip


@pytest.mark.parametrize("content", [None, "{not json", '{"rows": []}'])
def test_report_of_a_file_it_did_not_write_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    docs = tmp_path / "benchmarks.md"
    assert peers_vs_search.main(["--report", str(path), "--docs", str(docs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --report {path}: not a results JSON") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not docs.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--networks", "resnet56"], "error: --networks resnet56: not in profile cpu (resnet20)"),
        (["--data-root", "{tmp}/nowhere"], "error: --data-root {tmp}/nowhere: no such folder"),
    ],
)
def test_a_partial_run_it_cannot_make_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Before any base is trained or anything written: the input, the problem, the fix."""
    out = tmp_path / "results"
    argv = [a.format(tmp=tmp_path) for a in args]
    assert peers_vs_search.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path)) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_gpu_cell_runs_without_ray_and_replays_like_the_cpu_table() -> None:
    """The issue-20 MobileNetV2 cell runs without Ray (the archive that travels with the
    dataset leaves it out) and replays with the cpu profile's fine-tune, so its margins read
    like the cpu table's."""
    cell, cpu = peers_vs_search.PROFILES["gpu-mobilenetv2"], peers_vs_search.PROFILES["cpu"]
    assert cell.networks == ("mobilenetv2",) and cell.budgets == (0.2,)
    assert cell.executor == "local" and cell.max_concurrent == 1
    assert cell.fastnas_divisor == 32 and cpu.fastnas_divisor == 8  # see Profile.fastnas_divisor
    assert (cell.replay_epochs, cell.trials, cell.space) == (
        cpu.replay_epochs,
        cpu.trials,
        cpu.space,
    )


def test_the_cpu_cell_is_the_gpu_cell_run_like_the_cpu_table() -> None:
    """The same cell on 2 cores, a seed a session: the cpu table's search, executor and final
    fine-tune on MobileNetV2 at B 0.2, FastNAS at the GPU cell's divisor with its BatchNorm
    calibration on small batches (its map would otherwise take about an hour here)."""
    cell, gpu, cpu = (
        peers_vs_search.PROFILES[name] for name in ("cpu-mobilenetv2", "gpu-mobilenetv2", "cpu")
    )
    assert (cell.networks, cell.budgets, cell.fastnas_divisor) == (
        gpu.networks,
        gpu.budgets,
        gpu.fastnas_divisor,
    )
    same = ("replay_epochs", "trials", "space", "executor", "max_concurrent", "rungs")
    assert [getattr(cell, f) for f in same] == [getattr(cpu, f) for f in same]
    assert cell.fastnas_batch_size < cpu.fastnas_batch_size == gpu.fastnas_batch_size


def _ladder_study() -> tuple[optuna.Study, dict[str, int]]:
    """A laddered study: a baseline, three searched trials at the budget (one promoted twice),
    one below the budget. Rung figures are higher than rung 0's, as longer fine-tunes give."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(studies.CONFIG_ATTR, SearchConfig(budget_flops=0.5).to_dict())
    numbers: dict[str, int] = {}

    def finish(name: str, acc: float, ratio: float, epochs: float, **attrs: object) -> None:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("policy", {"retrain": {"epochs": epochs}})
        trial.set_constraint(studies.CONSTRAINT, ratio - 0.5)
        study.tell(trial, [acc, ratio])
        numbers[name] = trial.number

    finish("baseline", 0.93, 0.5, 0.1, **{studies.BASELINE_ATTR: "uniform-l1"})
    finish("a", 0.91, 0.5, 0.1)
    finish("b", 0.95, 0.49, 0.1)  # the best rung-0 figure at the budget
    finish("below", 0.99, 0.3, 0.1)  # better, but far under the budget
    finish("a1", 0.96, 0.5, 0.3, **{studies.RUNG_ATTR: 1, studies.PARENT_ATTR: numbers["a"]})
    finish("a2", 0.97, 0.5, 0.9, **{studies.RUNG_ATTR: 2, studies.PARENT_ATTR: numbers["a1"]})
    return study, numbers


def test_the_no_ladder_row_is_the_best_rung_0_figure_and_its_cost_counts_every_rung() -> None:
    study, n = _ladder_study()
    unladdered = peers_vs_search.rung0_winner(study, 0.5)
    assert unladdered is not None and unladdered.number == n["b"]  # not the baseline, not "below"
    top = study.trials[n["a2"]]
    assert peers_vs_search._root(study, top) == n["a"]
    assert peers_vs_search._lineage(study, top) == pytest.approx(0.1 + 0.3 + 0.9)
    assert peers_vs_search._lineage(study, study.trials[n["b"]]) == pytest.approx(0.1)
    rung_trials = [study.trials[n["a1"]], top]
    wall = peers_vs_search._ladder_wall(study)
    first = min(t.datetime_start for t in rung_trials)
    last = max(t.datetime_complete for t in rung_trials)
    assert wall == pytest.approx((last - first).total_seconds())


def test_a_base_that_did_not_train_is_refused_in_one_line(
    trained_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base at chance would make every margin noise: the run says so instead of searching."""
    import torch

    from autoprune.base import load_base

    checkpoint = torch.load(trained_base, map_location="cpu", weights_only=True)
    assert peers_vs_search.base_is_trained(trained_base, print)
    checkpoint["metrics"]["val_accuracy"] = 0.1
    at_chance = tmp_path / "base.pt"
    torch.save(checkpoint, at_chance)
    assert load_base(at_chance).metrics["val_accuracy"] == 0.1
    said: list[str] = []
    assert not peers_vs_search.base_is_trained(at_chance, said.append)
    assert said[0].startswith(f"error: the base {at_chance} has val accuracy 0.100, under 0.5")


def test_a_peer_that_breaks_costs_its_row_only() -> None:
    said: list[str] = []
    try:
        raise RuntimeError("CUDA error: an illegal memory access\nmore detail")
    except RuntimeError as exc:
        status = peers_vs_search._failed(exc, said.append)
    assert status == "failed: RuntimeError: CUDA error: an illegal memory access"
    assert said and said[0].startswith("Traceback") and "illegal memory access" in said[0]


def test_seeds_start_only_while_the_time_left_holds_the_longest_so_far() -> None:
    now = [0.0]
    stopped: list[int] = []
    ran: list[int] = []
    for seed in peers_vs_search.within_deadline(
        [0, 1, 2, 3], 100.0, stopped.append, lambda: now[0]
    ):
        ran.append(seed)
        now[0] += {0: 30.0, 1: 45.0, 2: 10.0}[seed]  # seed 2 starts at 75: 75 + 45 > 100
    assert ran == [0, 1] and stopped == [2]
    now[0] = 0.0
    assert list(peers_vs_search.within_deadline([0, 1], None, stopped.append, lambda: 1e9)) == [
        0,
        1,
    ]
    # already past the deadline, not even the first seed starts
    assert list(peers_vs_search.within_deadline([5], 10.0, stopped.append, lambda: 50.0)) == []
