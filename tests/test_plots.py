"""``autoprune plot`` and the plots ``search``/``export`` write: a PNG and an offline HTML page.

The study here is written directly (no training): trials with the user attributes a search
stores, so what is checked is what each kind of trial becomes on the plot: the feasible front,
dominated and infeasible trials, a named baseline, a candidate screened out by the proxy, the
budget line, and the base model's point read from its base checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.axes
import matplotlib.image
import optuna
import pytest

from autoprune import plots
from autoprune import study as studies
from autoprune.base import save_base
from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.modelspec import ModelSpec
from autoprune.policy import Depth, GroupPolicy, Policy

SPEC = ModelSpec("resnet20", 10, (1, 28, 28))
BASE_ACCURACY = 0.985
# (val accuracy, MACs ratio, baseline name, fine-tuned): the embedded default's study at 0.5
TRIALS = [
    (0.96, 0.49, "uniform-l1", True),  # a baseline, dominated by trial 1
    (0.97, 0.48, None, True),  # front
    (0.93, 0.30, None, True),  # front
    (0.92, 0.45, None, True),  # feasible, dominated
    (0.99, 0.70, None, True),  # infeasible: over the budget
    (None, 0.47, None, False),  # screened out by the proxy: never fine-tuned
]


def _policy(criterion: str, drop: list[str] | None = None) -> dict[str, Any]:
    groups = {
        "layer1.0.conv1": GroupPolicy(0.5, criterion),
        "layer2.0.conv1": GroupPolicy(0.3, "l1"),
    }
    return Policy(SPEC, groups, depth=Depth(drop_blocks=drop or [])).to_dict()


def write_study(tmp_path: Path, base: Path | None, objective: str = "macs") -> tuple[str, Any]:
    """A study of ResNet-20/MNIST-5k at budget 0.5 holding :data:`TRIALS`; its URL and itself."""
    if base is not None and not base.exists():
        save_base(
            base,
            SPEC.build(),
            SPEC,
            {"name": "mnist5k", "seed": 0},
            {"val_accuracy": BASE_ACCURACY},
        )
    url = f"sqlite:///{tmp_path / 'plots.db'}"
    config = SearchConfig(
        base_checkpoint=str(base) if base else None,
        objective=objective,
        budget_latency=0.6 if objective != "macs" else None,
        storage=url,
        study="p",
    )
    storage = studies.open_storage(url)
    study = studies.create_or_load(storage, "p", config, optuna.samplers.RandomSampler(0))
    studies.save_config(study, config)
    for i, (accuracy, macs, baseline, finetuned) in enumerate(TRIALS):
        trial = study.ask()
        if baseline:
            trial.set_user_attr(studies.BASELINE_ATTR, baseline)
        result = {
            "val_accuracy": accuracy,
            "macs_ratio": macs,
            "params_ratio": macs + 0.05,
            "proxy_accuracy": 0.5 + i / 100,
            "finetuned": finetuned,
            "policy": _policy("fpgm" if i == 1 else "l1", ["layer3.2"] if i == 2 else None),
        }
        if objective != "macs":
            result.update(latency_ratio=macs + 0.05, latency_ms=2.0 * (macs + 0.05))
        studies.finish_trial(study, trial, result, budget=config.budgets())
    return url, study


def test_collect_places_every_kind_of_trial(tmp_path: Path) -> None:
    _, study = write_study(tmp_path, tmp_path / "base.pt")
    plot = plots.collect(study)
    kinds = {t.number: t.kind for t in plot.trials}
    assert kinds == {
        0: "feasible",
        1: "front",
        2: "front",
        3: "feasible",
        4: "infeasible",
        5: "screened",
    }
    assert [(t.number, t.baseline) for t in plot.baselines()] == [(0, "uniform-l1")]
    assert plot.budget == 0.5 and plot.metric == "macs_ratio"
    assert plot.base_accuracy == pytest.approx(BASE_ACCURACY)
    hover = {t.number: t.hover for t in plot.trials}
    assert "trial 1 (searched)" in hover[1] and "val acc 0.9700" in hover[1]
    assert "MACs ratio 0.4800" in hover[1] and "criteria fpgmx1 l1x1" in hover[1]
    assert "baseline uniform-l1" in hover[0] and "blocks dropped: layer3.2" in hover[2]
    assert "screened out" in hover[5] and "val acc" not in hover[5]


def _plotly_figure(html: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The data and layout the page hands ``Plotly.newPlot``."""
    decoder = json.JSONDecoder()
    rest = html[html.index("Plotly.newPlot(") + len("Plotly.newPlot(") :]
    _, end = decoder.raw_decode(rest.lstrip())  # the div's id
    rest = rest.lstrip()[end:].lstrip().removeprefix(",").lstrip()
    data, end = decoder.raw_decode(rest)
    layout, _ = decoder.raw_decode(rest[end:].lstrip().removeprefix(",").lstrip())
    return data, layout


def test_plot_verb_writes_png_and_offline_html(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = write_study(tmp_path, tmp_path / "base.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "p", "--storage", url]) == 0
    folder = tmp_path / "policies" / "p"  # export's folder by default
    assert capsys.readouterr().out.split() == ["policies/p/front.png", "policies/p/front.html"]

    pixels = matplotlib.image.imread(folder / "front.png")
    width, height = (round(side * plots.PNG_DPI) for side in plots.PNG_INCHES)
    assert pixels.shape[:2] == (height, width)

    html = (folder / "front.html").read_text()
    assert "<script src=" not in html, "plotly.js is inlined: the page opens offline"
    assert "plotly" in html.lower()
    data, layout = _plotly_figure(html)
    traces = {t["name"]: t for t in data}
    front = traces[plots.KINDS["front"]]
    assert front["customdata"] == [2, 1] and front["x"] == [0.3, 0.48]  # by ascending ratio
    assert traces[plots.KINDS["infeasible"]]["customdata"] == [4]
    assert traces[plots.KINDS["feasible"]]["customdata"] == [3, 0]
    assert traces[plots.KINDS["screened"]]["customdata"] == [5]
    labels = [a for a in layout["annotations"] if a.get("text") == "uniform-l1"]
    assert len(labels) == 1 and labels[0]["x"] == traces["baselines"]["x"][0]
    assert "baseline uniform-l1" in traces["baselines"]["hovertext"][0]
    assert traces["base model"]["x"] == [1.0] and traces["base model"]["y"] == [BASE_ACCURACY]
    budget_lines = [s for s in layout["shapes"] if s.get("x0") == 0.5 and s.get("x1") == 0.5]
    assert budget_lines, "the budget is a vertical line at 0.5"
    assert layout["xaxis"]["title"]["text"].startswith("MACs ratio")


def test_latency_study_is_plotted_by_latency_ratio(tmp_path: Path) -> None:
    _, study = write_study(tmp_path, tmp_path / "base.pt", objective="latency")
    plot = plots.collect(study)
    assert plot.metric == "latency_ratio" and plot.budget == 0.6
    by_number = {t.number: t for t in plot.trials}
    assert by_number[1].ratio == pytest.approx(0.53)
    assert "latency ratio 0.5300 (1.06 ms)" in by_number[1].hover
    data = plots.figure(plot).to_dict()["data"]
    assert any(t["name"] == plots.KINDS["infeasible"] for t in data)  # latency 0.75 > 0.6
    assert plots.figure(plot).layout.xaxis.title.text.startswith("latency ratio")


def test_unreadable_base_checkpoint_plots_without_the_base_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, study = write_study(tmp_path, tmp_path / "base.pt")
    (tmp_path / "base.pt").unlink()
    written = plots.plot_study(study, tmp_path / "out")
    assert [p.name for p in written] == ["front.png", "front.html"]
    err = capsys.readouterr().err
    assert "base.pt does not exist" in err and "without the base model's point" in err
    names = {t["name"] for t in plots.figure(plots.collect(study)).to_dict()["data"]}
    assert "base model" not in names and plots.KINDS["front"] in names


def test_export_writes_both_plots_and_latency_in_front_yaml(tmp_path: Path) -> None:
    import yaml

    from autoprune.export import export_front

    _, study = write_study(tmp_path, tmp_path / "base.pt", objective="both")
    out = tmp_path / "policies" / "p"
    export_front(study, out)
    assert (out / "front.png").stat().st_size > 1000
    assert (out / "front.html").stat().st_size > 100_000  # plotly.js inlined
    summary = yaml.safe_load((out / "front.yaml").read_text())
    assert summary["metric"] == "macs_ratio"
    point = next(p for p in summary["front"] if p["trial"] == 1)
    assert point["latency_ratio"] == pytest.approx(0.53) and point["macs_ratio"] == 0.48
    assert [(b["file"], b["trial"]) for b in summary["baselines"]] == [
        ("baseline-uniform-l1.yaml", 0)
    ]


def test_plot_of_an_unknown_study_or_onto_a_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = write_study(tmp_path, tmp_path / "base.pt")
    assert main(["plot", "nope", "--storage", url]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    target = tmp_path / "a-file"
    target.write_text("")
    assert main(["plot", "p", "--storage", url, "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def _baseline(name: str, ratio: float, acc: float) -> plots.PlottedTrial:
    return plots.PlottedTrial(0, "feasible", ratio, acc, name, "")


def test_labels_of_tied_baselines_stack_instead_of_overlapping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tied = [_baseline("uniform-l1", 0.5, 0.95), _baseline("uniform-taylor", 0.5, 0.95)]
    apart = _baseline("global-l1", 0.3, 0.90)
    baselines = [*tied, apart]
    assert plots.label_rows(baselines, baselines) == [0, 1, 0]  # a point far off keeps row 0
    plot = plots.FrontPlot("s", "macs_ratio", 0.5, trials=baselines)

    offsets: dict[str, Any] = {}
    real = matplotlib.axes.Axes.annotate

    def annotate(self: Any, text: str, xy: Any, *args: Any, **kwargs: Any) -> Any:
        offsets[text] = kwargs["xytext"]
        return real(self, text, xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", annotate)
    plots.write_png(plot, tmp_path / "f.png")
    assert offsets["uniform-l1"] != offsets["uniform-taylor"]  # PNG
    shifts = {a.text: a.yshift for a in plots.figure(plot).layout.annotations}
    assert shifts["uniform-l1"] != shifts["uniform-taylor"]  # HTML
    assert shifts["global-l1"] == shifts["uniform-l1"] == 0
