"""autoprune's searched winner against hand-written policies and the tools a user would pick instead.

    make benchmark                                             # the cpu profile (about an hour, 2 cores)
    python benchmarks/peers_vs_search.py --profile cpu --rungs 2   # what make benchmark runs
    python benchmarks/peers_vs_search.py --profile gpu        # ResNet-56 and MobileNetV2, one GPU
    python benchmarks/peers_vs_search.py --profile gpu-mobilenetv2 --data-root DIR    # one lent GPU
    python benchmarks/peers_vs_search.py --report benchmarks/results/peers-cpu-rungs2.json   # tables again

Fashion-MNIST. For every (network, budget, seed) it runs ``autoprune search`` (its baselines are
trials of the same study: uniform rates per criterion, global ranking, the sensitivity
allocation), then replays every baseline and the best *searched* policy at the budget with the
same final fine-tune (``replay --epochs E``). The peers prune the same base with their own
libraries (benchmarks/peers.py): Torch-Pruning's global iterative pruning with magnitude and
with Taylor importance, and ModelOpt FastNAS; their models get that same fine-tune (the
baselines' recipe, E epochs, the same seed) and the same evaluation.

Per (network, budget) it prints one block: test accuracy mean +- SE over seeds, the paired
margin of autoprune's winner over each method (mean +- SE of the per-seed differences), MACs
ratio, the wall time spent choosing the model, and the epochs fine-tuned (while choosing + the
final fine-tune). Results go to ``--out`` as JSON, ``docs/benchmarks.md`` is rewritten from
them and one plot per setting goes to ``docs/images/benchmarks/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_ab  # a sibling script: the ablation table of docs/benchmarks.md)

DATASET = "fashion-mnist"
SEARCHED = "autoprune (searched)"
NO_LADDER = "autoprune (searched, no ladder)"  # its winner at rung 0, when the search has a ladder
# A table's rows: hand-written policies, then the peers, then autoprune (its winner last).
KIND_ORDER = ("uniform", "global", "sensitivity", "torch-pruning", "fastnas", "searched")
# Fashion-MNIST's ten classes: chance is 0.1; the cpu profile's ResNet-20 base reaches 0.93.
MIN_BASE_ACCURACY = 0.5


@dataclass(frozen=True)
class Profile:
    """How much of the benchmark one run covers; sized for its machine."""

    networks: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    trials: int  # COMPLETE trials per search, baselines included
    replay_epochs: float  # the final fine-tune every method gets
    base_epochs: dict[str, float]  # the base recipe: `autoprune train --epochs N` per network
    fastnas_score_images: int  # val images FastNAS scores each candidate width on
    # FastNAS's channel_divisor: ModelOpt's default of 32 leaves ResNet-20's 16-64 channels 3
    # widths, 8 gives 11; MobileNetV2's 96-1280 get enough at 32, where 8 scores ~1,100 widths
    fastnas_divisor: int = 8
    # FastNAS recalibrates BatchNorm on 50 batches of this size before scoring each width; on
    # a 28x28 input each channel's statistics average over batch x H x W values, so 8 images
    # already give thousands per channel on the first layers
    fastnas_batch_size: int = 64
    space: str = "fashion-mnist"
    executor: str = "ray"
    data_root: str | None = None  # Fashion-MNIST's four IDX files (None: the Debian package's)
    max_concurrent: int = 2
    rungs: int = 1  # the search's ladder (--rungs); > 1 also replays the winner it had without
    eta: int = 3


PROFILES = {
    # About 63 minutes on 2 cores with --rungs 2 once the base exists (training it adds ~14
    # minutes, once): the six searches take ~22 of them, the peers' calls ~5, the final
    # fine-tunes the rest (without the ladder the searches take a third less).
    # MobileNetV2 is left to the gpu profile: an epoch of it on Fashion-MNIST takes ~11 minutes
    # on 2 cores (4.8x ResNet-20's 2.3), so its base alone would take the hour.
    "cpu": Profile(
        networks=("resnet20",),
        budgets=(0.3, 0.2),
        seeds=(0, 1, 2),
        trials=14,
        replay_epochs=0.3,
        base_epochs={"resnet20": 10},
        fastnas_score_images=500,
    ),
    # Issue 20's compact-net cell on the 2-core machine, one seed a session (`--seeds N`, then
    # `--report` joins the JSONs): MobileNetV2 at B 0.2 with the cpu profile's search, executor
    # and final fine-tune. An epoch of MobileNetV2 took 8-14 minutes here, so its base gets 3
    # (~35 minutes, once; kept under $AUTOPRUNE_HOME for the next seeds). FastNAS runs at
    # ModelOpt's default channel_divisor (see gpu-mobilenetv2) and calibrates on batches of 8:
    # its map of 243 widths then took ~20 minutes, where batches of 64 would take about an hour
    # (the map is kept beside the results, so later seeds reuse it). Measured: the first seed
    # 94 minutes with the base, the map and the sensitivity pass; a later one 28.5 minutes.
    "cpu-mobilenetv2": Profile(
        networks=("mobilenetv2",),
        budgets=(0.2,),
        seeds=(0, 1, 2),
        trials=14,
        replay_epochs=0.3,
        base_epochs={"mobilenetv2": 3},
        fastnas_score_images=500,
        fastnas_divisor=32,
        fastnas_batch_size=8,
    ),
    # The whole table on one GPU: not run yet. Its bases alone (30 epochs each) and 18 searches
    # take longer than the 15 minutes of device time a session is lent; gpu-mobilenetv2 is the
    # part of it issue 20's check needs, sized to fit.
    "gpu": Profile(
        networks=("resnet56", "mobilenetv2"),
        budgets=(0.5, 0.3, 0.2),
        seeds=(0, 1, 2),
        trials=20,
        replay_epochs=3.0,
        base_epochs={"resnet56": 30, "mobilenetv2": 30},
        fastnas_score_images=1000,
        max_concurrent=8,
    ),
    # Issue 20's compact-net cell, sized for one lent GPU session (one command of at most 10
    # minutes): MobileNetV2 at B 0.2, the cpu profile's search and final fine-tune, on a base
    # of 15 epochs. No Ray: the package archive that travels with the dataset leaves it out
    # (64 MiB a call), so trials run one at a time in the driver (`--executor local`), on the
    # GPU. `--time-budget-s` starts no seed the time left cannot hold; the JSON is rewritten
    # after every seed, and the base (about 9 MB) can go back for the next session to carry.
    "gpu-mobilenetv2": Profile(
        networks=("mobilenetv2",),
        budgets=(0.2,),
        seeds=(0, 1, 2),
        trials=14,
        replay_epochs=0.3,
        base_epochs={"mobilenetv2": 15},
        fastnas_score_images=500,
        fastnas_divisor=32,
        executor="local",
        max_concurrent=1,
    ),
}


def ensure_base(network: str, epochs: float, log: Any, data_root: str | None = None) -> Path:
    """The network's Fashion-MNIST base (``autoprune train`` recipe), trained here when missing."""
    from autoprune.base import default_base_path, train_base

    path = default_base_path(network, DATASET)
    if not path.exists():
        log(f"training the {network} base: autoprune train --model {network} "
            f"--dataset {DATASET} --epochs {epochs:g}")  # fmt: skip
        train_base(network, DATASET, epochs, path, data_root=data_root)
    return path


def base_is_trained(base: Path, log: Any) -> bool:
    """False (said in one line) for a base near chance: every margin on it would be noise, so a
    run stops there instead of spending its (GPU) time."""
    from autoprune.base import load_base

    accuracy = load_base(base).metrics.get("val_accuracy")
    if accuracy is None or float(accuracy) >= MIN_BASE_ACCURACY:
        return True
    log(
        f"error: the base {base} has val accuracy {float(accuracy):.3f}, under "
        f"{MIN_BASE_ACCURACY}: it did not train; delete it and train it for more epochs "
        "(autoprune train --epochs N) before comparing policies on it"
    )
    return False


def uniform_extras(space_name: str, have: set[str]) -> list[str]:
    """Scoring criteria of the space with no ``uniform-`` baseline among the search's trials."""
    from autoprune import criteria
    from autoprune.space import SearchSpace

    offered = SearchSpace.load(space_name).criteria
    return [c for c in offered
            if not criteria.get(c).is_selection_rule and f"uniform-{c}" not in have]  # fmt: skip


def with_criterion(policy: Any, criterion: str) -> Any:
    """The same policy (rates, recipe, seed) with every group scored by ``criterion``: other
    channels go, so the digest of the ones the trial removed is dropped with its measurements."""
    groups = {name: replace(g, criterion=criterion, chosen_from=None)
              for name, g in policy.groups.items()}  # fmt: skip
    return replace(policy, groups=groups, measured={}, removed_sha256=None)


def rung0_winner(study: Any, budget: float) -> Any:
    """The searched trial a search without its ladder would have picked: the best rung-0 figure
    at the budget (None when there is none)."""
    from autoprune import study as studies
    from autoprune.records import TrialRecord

    metric = studies.front_metric(study)
    rows = [
        t
        for t in studies.completed_trials(study)
        if studies.rung_of(t) == 0
        and not TrialRecord.from_trial(t).is_baseline
        and (ratio := studies.trial_metric(t, metric)) is not None
        and studies.at_budget(ratio, budget, metric)
    ]
    return max(rows, key=lambda t: (t.values[0], -t.number), default=None)


def _ladder_wall(study: Any) -> float:
    """Seconds from the first ladder promotion's start to the last one's end (0: no ladder)."""
    from autoprune import study as studies

    rungs = [t for t in studies.completed_trials(study) if studies.rung_of(t) > 0]
    if not rungs:
        return 0.0
    start = min(t.datetime_start for t in rungs)
    end = max(t.datetime_complete for t in rungs)
    return (end - start).total_seconds()


def _root(study: Any, trial: Any) -> int:
    """The rung-0 trial a (promoted) trial's policy first ran as."""
    from autoprune.records import TrialRecord

    while (parent := TrialRecord.from_trial(trial).promoted_from) is not None:
        trial = study.trials[int(parent)]
    return int(trial.number)


def _lineage(study: Any, trial: Any) -> float:
    """Fine-tune epochs a trial and the rungs below it (its parents) spent."""
    from autoprune.records import TrialRecord

    total = 0.0
    while trial is not None:
        total += search_ab.fine_tune_epochs(trial)
        parent = TrialRecord.from_trial(trial).promoted_from
        trial = study.trials[int(parent)] if parent is not None else None
    return total


def _failed(exc: Exception, log: Any) -> str:
    """A peer's unexpected error as its row's status; the traceback goes to the log. On a lent
    GPU a peer that breaks must not cost the run the other methods' rows."""
    import traceback

    import peers

    log(traceback.format_exc().rstrip())
    lines = peers.message_lines(exc)
    return f"failed: {type(exc).__name__}: {lines[0] if lines else ''}"[:200].rstrip(": ")


def within_deadline(
    items: Any, deadline: float | None, out_of_time: Any, clock: Any = time.monotonic
) -> Any:
    """``items`` one by one while the time left (to ``deadline``, on ``clock``) holds the longest
    item so far; at the first that it cannot, ``out_of_time(item)`` and no more."""
    longest = 0.0
    for item in items:
        start = clock()
        if deadline is not None and start + longest > deadline:
            out_of_time(item)
            return
        yield item
        longest = max(longest, clock() - start)


def _trial_wall(trial: Any) -> float:
    if trial is None:  # a row derived from another trial's policy: nothing was spent choosing it
        return 0.0
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return float("nan")


def run_setting(
    network: str,
    base: Path,
    budget: float,
    profile: Profile,
    out: Path,
    log: Any,
    on_seed: Any = None,
    deadline: float | None = None,
) -> list[dict]:
    """Every method at one (network, budget), over the profile's seeds: one row each.

    ``on_seed(rows)`` is called after each seed with the rows so far (the caller saves them, so
    a run cut short keeps its finished seeds); no seed starts once ``time.monotonic()`` is past
    ``deadline`` minus the longest seed so far (:func:`within_deadline`)."""
    import peers
    import torch

    from autoprune import study as studies
    from autoprune.base import load_base
    from autoprune.checkpoint import replay
    from autoprune.config import SearchConfig
    from autoprune.evaluate import load_splits
    from autoprune.policy import Policy
    from autoprune.records import TrialRecord
    from autoprune.runner import search
    from autoprune.train import TrainConfig, evaluate, finetune_pruned, select_device

    device = select_device("auto")
    loaded = load_base(base)
    splits = load_splits(DATASET, profile.data_root)
    example = loaded.spec.example_inputs().to(device)
    rows: list[dict] = []
    storage = f"sqlite:///{(out / 'peers.db').resolve()}"

    def row(seed: int, method: str, kind: str, **values: Any) -> dict:
        r = {"network": network, "budget": budget, "seed": seed, "method": method, "kind": kind,
             "test_images": len(splits.test), **values}  # fmt: skip
        rows.append(r)
        if "test_accuracy" in r:
            log(f"{network:<12} {budget:>4g} {seed:>4} {method:<26} test {r['test_accuracy']:.4f} "
                f"MACs {r['macs_ratio']:.3f}  choose {r['select_wall_s']:.0f} s")  # fmt: skip
        else:
            log(f"{network:<12} {budget:>4g} {seed:>4} {method:<26} {r['status']}")
        return r

    # The peers' models do not depend on the seed (each is a fixed rule on the base): cut once.
    peer_models: dict[str, Any] = {}
    missing = peers.missing()
    model = loaded.build().to(device)
    for importance in peers.TP_IMPORTANCES:
        name = f"torch-pruning global ({importance})"
        if "torch-pruning" in missing:
            peer_models[name] = f"not installed: {missing['torch-pruning']}"
            continue
        try:
            peer_models[name] = peers.torch_pruning_global(
                model, example, budget, importance=importance, calibration=splits.calibration,
                device=device,
            )  # fmt: skip
        except peers.PeerUnavailable as exc:
            peer_models[name] = str(exc)
        except Exception as exc:  # a peer's own failure costs its row, not the others'
            peer_models[name] = _failed(exc, log)
    if "fastnas" in missing:
        peer_models["FastNAS (ModelOpt)"] = f"not installed: {missing['fastnas']}"
    else:
        score = torch.utils.data.Subset(splits.val, range(profile.fastnas_score_images))
        try:
            peer_models["FastNAS (ModelOpt)"] = peers.fastnas(
                model, example, budget, train=splits.calibration, score=score, device=device,
                divisor=profile.fastnas_divisor, batch_size=profile.fastnas_batch_size,
                checkpoint=out / "fastnas" / f"{network}-{loaded.sha256[:12]}.pth",
            )  # fmt: skip
        except peers.PeerUnavailable as exc:
            peer_models["FastNAS (ModelOpt)"] = str(exc)
        except Exception as exc:
            peer_models["FastNAS (ModelOpt)"] = _failed(exc, log)

    def out_of_time(seed: int) -> None:
        log(f"{network} {budget:g}: out of time, seed {seed} and later not run")

    for seed in within_deadline(profile.seeds, deadline, out_of_time):
        name = f"peers-{network}-b{budget:g}-s{seed}-{loaded.sha256[:8]}"
        config = SearchConfig(
            model=network, base_checkpoint=str(base), budget_flops=budget, dataset=DATASET,
            data_root=profile.data_root,
            space=profile.space, seed=seed, executor=profile.executor, storage=storage,
            study=name, trials=profile.trials, max_concurrent=profile.max_concurrent,
            rungs=profile.rungs, eta=profile.eta,
        )  # fmt: skip
        t0 = time.perf_counter()
        search(config, log=lambda _line: None, quiet=True, export=False)
        search_wall = time.perf_counter() - t0
        study = studies.load_study(studies.open_storage(storage), name)
        complete = studies.completed_trials(study)
        picks = [
            (str(TrialRecord.from_trial(t).baseline), t) for t in studies.baseline_trials(study)
        ]
        searched = studies.best_searched(study, budget)
        if searched is not None:
            picks.append((SEARCHED, searched))
        else:
            row(seed, SEARCHED, "searched", status="no searched trial at the budget")
        unladdered = rung0_winner(study, budget) if profile.rungs > 1 else None
        if unladdered is not None:  # what the same search picks without its ladder
            picks.append((NO_LADDER, unladdered))
        recipe = None
        jobs: list[tuple[str, Policy, Any]] = []
        for label, trial in picks:
            policy = TrialRecord.from_trial(trial).applied_policy(trial.number)
            assert policy is not None, f"trial {trial.number} stored no policy"
            jobs.append((label, policy, trial))
            if label == "uniform-l1":
                recipe = policy
        assert recipe is not None, "the search ran without the uniform-l1 baseline"
        # The default baselines leave out data-free criteria other than l1 (fpgm): the table
        # still has a uniform row per criterion, at uniform-l1's rates and recipe, replayed only.
        at = 1 + max(i for i, (label, _, _) in enumerate(jobs) if label.startswith("uniform-"))
        jobs[at:at] = [
            (f"uniform-{c}", with_criterion(recipe, c), None)
            for c in uniform_extras(profile.space, {label for label, _ in picks})
        ]
        replayed: dict[int, Any] = {}  # lineage root -> replay (a rung re-runs the same policy)
        for label, policy, trial in jobs:
            t1 = time.perf_counter()
            root = _root(study, trial) if trial is not None else None
            result = replayed.get(root) if root is not None else None
            if result is None:
                result = replay(
                    policy, base_checkpoint=str(base), data_root=profile.data_root,
                    epochs=profile.replay_epochs,
                    out=out / "checkpoints" / f"{name}-{label}.pt", export_program_file=False,
                    log=lambda _line: None,
                )  # fmt: skip
                if root is not None:
                    replayed[root] = result
            is_searched = label == SEARCHED
            if label == NO_LADDER:
                kind, wall = "searched", search_wall - _ladder_wall(study)
                epochs = sum(
                    search_ab.fine_tune_epochs(t) for t in complete if studies.rung_of(t) == 0
                )
            elif is_searched:
                kind, wall, epochs = (
                    "searched",
                    search_wall,
                    sum(search_ab.fine_tune_epochs(t) for t in complete),
                )
            else:
                kind, wall, epochs = label.split("-")[0], _trial_wall(trial), _lineage(study, trial)
            row(
                seed, label, kind,
                test_accuracy=result.test_accuracy, val_accuracy=result.val_accuracy,
                macs_ratio=result.macs_ratio, select_wall_s=wall, select_epochs=epochs,
                rung=studies.rung_of(trial) if trial is not None else 0,
                **({} if trial is not None else {"derived": "uniform-l1's rates, not a trial"}),
                finetune_wall_s=time.perf_counter() - t1, finetune_epochs=profile.replay_epochs,
            )  # fmt: skip
        # The peers' fine-tune: the baselines' recipe and seed, the replay's epochs and loop
        # (BatchNorm re-estimated after the last step, distilled from the base when it distils).
        train_config = TrainConfig(
            replace(recipe.retrain, epochs=profile.replay_epochs), cudnn_benchmark=False
        )
        for method, made in peer_models.items():
            kind = "fastnas" if method.startswith("FastNAS") else "torch-pruning"
            if isinstance(made, str):
                row(seed, method, kind, status=made)
                continue
            tuned = copy.deepcopy(made.model)
            t1 = time.perf_counter()
            finetune_pruned(
                tuned, splits.train, splits.calibration, train_config, device, seed=recipe.seed,
                teacher=loaded.build() if train_config.retrain.distill.on else None,
            )  # fmt: skip
            finetune_wall = time.perf_counter() - t1
            row(
                seed, method, kind,
                test_accuracy=evaluate(tuned, splits.test, device).accuracy,
                val_accuracy=evaluate(tuned, splits.val, device).accuracy,
                macs_ratio=made.macs_ratio, select_wall_s=made.wall_s, select_epochs=0.0,
                finetune_wall_s=finetune_wall, finetune_epochs=profile.replay_epochs,
                detail=made.detail,
            )  # fmt: skip
        if on_seed is not None:
            on_seed(rows)
    return rows


# ---------------------------------------------------------------------------------- the report


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def table(rows: list[dict], network: str, budget: float) -> tuple[list[str], list[list[str]]]:
    """One block of the report: a line per method, autoprune's winner last."""
    mine = [r for r in rows if r["network"] == network and r["budget"] == budget]
    ours = {
        r["seed"]: r["test_accuracy"]
        for r in mine
        if r["method"] == SEARCHED and "test_accuracy" in r
    }
    kinds = {r["method"]: r["kind"] for r in mine}
    methods = sorted(
        dict.fromkeys(r["method"] for r in mine if r["method"] != SEARCHED),
        key=lambda m: KIND_ORDER.index(kinds[m]) if kinds[m] in KIND_ORDER else -1,
    )
    methods.append(SEARCHED)
    header = ["method", "test acc (mean ± SE)", "autoprune − it, pt (paired)", "MACs",
              "choose s", "epochs (choose + final)", "seeds"]  # fmt: skip
    lines = []
    for method in methods:
        got = [r for r in mine if r["method"] == method]
        done = [r for r in got if "test_accuracy" in r]
        if not done:
            why = got[0]["status"] if got else "not run"
            lines.append([method, f"— ({why})", "", "", "", "", "0"])
            continue
        mean, se = _mean_se([r["test_accuracy"] for r in done])
        diffs = [100 * (ours[r["seed"]] - r["test_accuracy"]) for r in done if r["seed"] in ours]
        if method == SEARCHED or not diffs:
            margin = "—"
        else:
            d, dse = _mean_se(diffs)
            margin = f"{d:+.2f} ± {dse:.2f}"
        lines.append([
            method, f"{mean:.4f} ± {se:.4f}", margin,
            f"{statistics.fmean(r['macs_ratio'] for r in done):.3f}",
            f"{statistics.fmean(r['select_wall_s'] for r in done):.0f}",
            f"{statistics.fmean(r['select_epochs'] for r in done):.2g} + {done[0]['finetune_epochs']:g}",
            str(len(done)),
        ])  # fmt: skip
    return header, lines


def binomial_se(rows: list[dict], network: str, budget: float) -> float:
    """One binomial SE of a single test accuracy at this setting, in points."""
    accs = [r["test_accuracy"] for r in rows
            if r["network"] == network and r["budget"] == budget and "test_accuracy" in r]  # fmt: skip
    p = statistics.fmean(accs)
    return 100 * math.sqrt(p * (1 - p) / rows[0]["test_images"])


def settings(rows: list[dict]) -> list[tuple[str, float]]:
    return list(dict.fromkeys((r["network"], r["budget"]) for r in rows))


def print_tables(rows: list[dict]) -> None:
    for network, budget in settings(rows):
        header, lines = table(rows, network, budget)
        widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
        print(f"\n{network} on {DATASET}, MACs budget {budget:g} "
              f"(one test accuracy's binomial SE: {binomial_se(rows, network, budget):.2f} pt)")  # fmt: skip
        for line in [header, *lines]:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


def plot(rows: list[dict], network: str, budget: float, path: Path) -> Path:
    """Test accuracy against MACs ratio, every method (mean ± SE over seeds), the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    mine = [
        r
        for r in rows
        if r["network"] == network and r["budget"] == budget and "test_accuracy" in r
    ]
    _header, lines = table(rows, network, budget)  # the table's order: the legend's
    methods = [line[0] for line in lines if any(r["method"] == line[0] for r in mine)]
    markers = {"uniform": "o", "global": "s", "sensitivity": "D", "torch-pruning": "^",
               "fastnas": "v", "searched": "P"}  # fmt: skip
    colors = plt.get_cmap("tab20").colors  # 12+ methods: tab10 would repeat a colour
    for i, method in enumerate(methods):
        got = [r for r in mine if r["method"] == method]
        acc, se = _mean_se([r["test_accuracy"] for r in got])
        macs = statistics.fmean(r["macs_ratio"] for r in got)
        style = (
            {"marker": "*", "markersize": 14, "color": "crimson"}
            if method == SEARCHED
            else {"marker": markers.get(got[0]["kind"], "o"), "color": colors[i % len(colors)]}
        )
        ax.errorbar(macs, acc, yerr=0 if math.isnan(se) else se, label=method, capsize=3, **style)
    ax.axvline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set_xlabel("MACs ratio (pruned / base)")
    ax.set_ylabel("test accuracy after the equal fine-tune")
    ax.set_title(f"{network} on {DATASET}, budget {budget:g}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the points
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_markdown(
    rows: list[dict], meta: dict, path: Path, images: Path, ablations: Path | None = None
) -> None:
    """``docs/benchmarks.md``: generated from the JSON, never typed; with ``ablations`` (the
    folder of ``search_ab.py``'s rows) its table of the search's dimensions follows."""
    out = [
        "# Benchmarks: autoprune's searched winner against hand-written policies and peers",
        "",
        "<!-- generated by benchmarks/peers_vs_search.py from its JSON; do not edit -->",
        "",
        f"Command: `{meta['command']}` (profile `{meta['profile']}`) at commit "
        f"{meta.get('commit') or 'unrecorded'}, {meta['date']}, "
        f"{meta['machine']}, torch {meta['torch']}.",
        "",
        "Every method's model gets the same final fine-tune "
        f"({meta['settings']['replay_epochs']:g} epochs, the baselines' recipe and seed) and is "
        "measured on Fashion-MNIST's 10,000-image test split. *autoprune − it* is the paired "
        "margin (same seed, same base) of autoprune's searched winner over the method, mean ± SE "
        "of the per-seed differences; *choose s* is the wall time spent choosing the model "
        "(the whole search for autoprune; one trial for a baseline; the library's call for a "
        "peer); epochs are fine-tune epochs while choosing + in the final fine-tune.",
        "",
    ]
    for network, budget in settings(rows):
        header, lines = table(rows, network, budget)
        out += [f"## {network}, MACs budget {budget:g}", "",
                f"One test accuracy's binomial SE: {binomial_se(rows, network, budget):.2f} pt.", "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
        out += ["| " + " | ".join(line) + " |" for line in lines]
        image = plot(rows, network, budget, images / f"{network}-b{budget:g}.png")
        out += ["", f"![{network} at {budget:g}]({os.path.relpath(image, path.parent)})", ""]
    table_lines = search_ab.ablation_table(ablations) if ablations is not None else []
    if table_lines:
        out += [
            "## Ablations: the search's own dimensions",
            "",
            f"Generated from `{ablations}/` (`python benchmarks/search_ab.py run LABEL --space "
            "benchmarks/spaces/ablate-LABEL.yaml`; `ablations` prints this table). One change "
            f"each to the `{search_ab.SPACE}` space (resnet20, {search_ab.TRIALS} trials of which "
            "6 baselines, Ray, 2 at once, no ladder), paired by seed with the space as bundled "
            f"(`{search_ab.CONTROL}`), on the same base and code (one row: two versions of the "
            "code on one space). *Searched test*: the best "
            f"searched policy at the budget replayed with {search_ab.REPLAY_EPOCHS:g} epochs of "
            "fine-tune; *front hypervolume*: the feasible front's (val accuracy against MACs "
            "ratio, reference at the base's MACs and accuracy 0.1); the search's wall is the cost, "
            "which for the retrain budgets includes their longer fine-tunes. The levers built "
            "for the search (ladder, distillation, BatchNorm re-estimation, constant liar, "
            "channels-last, start-up, screening floor) are measured in "
            "[performance.md](performance.md#search-levers-measured).",
            "",
            *table_lines,
            "",
        ]
    front_lines = (
        search_ab.front_table(ablations, search_ab.CONTROL) if ablations is not None else []
    )
    if len(front_lines) > 2:
        out += [
            "## The whole front at equal fine-tune epochs",
            "",
            f"Generated from `{ablations}/fronts-{search_ab.CONTROL}.jsonl` (`python "
            f"benchmarks/search_ab.py fronts {search_ab.CONTROL}`). The hypervolume of the "
            f"feasible front (val accuracy against MACs ratio, reference at ratio 1 and accuracy "
            f"0.1) that each `{search_ab.CONTROL}` search above made, against the fronts of "
            "uniform-l1 (the study's own baseline and recipe) and Torch-Pruning's global "
            f"magnitude pruning at {search_ab.FRONT_POINTS} budgets from 0.6 x B to B, each "
            "fine-tuned for an equal share of the epochs the search spent; *search − it* is "
            "paired by seed. The last row separates the policies from the epochs: the searched "
            "front's own policies, each fine-tuned again from the base for an equal share of "
            "the same epochs, as a user would after the search (so twice the epochs in all).",
            "",
            *front_lines,
            "",
        ]
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--images", type=Path, default=Path("docs/images/benchmarks"))
    parser.add_argument(
        "--report", type=Path, nargs="+",
        help="only print and write the report of results JSONs (several: their rows together, "
        "e.g. seeds run in separate sessions)",
    )  # fmt: skip
    parser.add_argument(
        "--rungs", type=int,
        help="the searches' ladder (autoprune search --rungs); the winner each would have "
        "picked without it is replayed too (a row of its own)",
    )  # fmt: skip
    parser.add_argument(
        "--budgets", type=float, nargs="+",
        help="only these of the profile's budgets (a partial run: its JSON gets a suffix and "
        "docs/benchmarks.md is left alone)",
    )  # fmt: skip
    parser.add_argument(
        "--networks", nargs="+",
        help="only these of the profile's networks (a partial run, as --budgets)",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, nargs="+",
        help="only these seeds (a partial run, as --budgets)",
    )  # fmt: skip
    parser.add_argument(
        "--data-root", type=Path,
        help="a folder holding Fashion-MNIST's four IDX files, gzipped or not (default: where "
        "Debian's dataset-fashion-mnist installs them); for a machine without the package",
    )  # fmt: skip
    parser.add_argument(
        "--time-budget-s", type=float,
        help="start no seed that the time left (measured from the start) cannot hold, judged "
        "by the longest seed so far; the results JSON keeps every finished seed",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.report:
        try:
            rows, meta = read_results(args.report)
        except ValueError as exc:
            print(f"error: --report {exc}; pass files from {args.out}/", file=sys.stderr)
            return 2
        print_tables(rows)
        if meta.get("profile") != "cpu":  # docs/benchmarks.md holds the cpu profile's tables
            return 0
        write_markdown(rows, meta, args.docs, args.images, args.out / "ab")
        return 0

    import torch

    from autoprune.errors import UserError

    profile = PROFILES[args.profile]
    command = f"python benchmarks/peers_vs_search.py --profile {args.profile}"
    suffix = ""
    if args.rungs:
        profile = replace(profile, rungs=args.rungs)
        suffix += f"-rungs{args.rungs}"
        command += f" --rungs {args.rungs}"
    if args.networks:
        unknown = sorted(set(args.networks) - set(profile.networks))
        if unknown:
            print(
                f"error: --networks {' '.join(unknown)}: not in profile {args.profile} "
                f"({', '.join(profile.networks)}); pick from those or another --profile",
                file=sys.stderr,
            )
            return 2
        profile = replace(profile, networks=tuple(args.networks))
        suffix += "-" + "-".join(args.networks)
        command += " --networks " + " ".join(args.networks)
    if args.budgets:
        profile = replace(profile, budgets=tuple(args.budgets))
        suffix += "-b" + "-".join(f"{b:g}" for b in args.budgets)
        command += " --budgets " + " ".join(f"{b:g}" for b in args.budgets)
    if args.seeds:
        profile = replace(profile, seeds=tuple(args.seeds))
        suffix += "-s" + "-".join(str(s) for s in args.seeds)
        command += " --seeds " + " ".join(str(s) for s in args.seeds)
    if args.data_root:
        if not args.data_root.is_dir():
            print(
                f"error: --data-root {args.data_root}: no such folder; give the folder that "
                "holds train-images-idx3-ubyte.gz and the other three Fashion-MNIST files",
                file=sys.stderr,
            )
            return 2
        profile = replace(profile, data_root=str(args.data_root.resolve()))
    # docs/benchmarks.md holds the cpu profile's whole tables; other runs print and save theirs
    partial = bool(args.networks or args.budgets or args.seeds) or args.profile != "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "commit": _commit(),
        "profile": args.profile,
        "settings": asdict(profile),
        "date": time.strftime("%Y-%m-%d"),
        "machine": (
            f"{torch.cuda.get_device_name()}"
            if torch.cuda.is_available()
            else f"{os.cpu_count()} CPU cores ({platform.machine()})"
        ),
        "torch": torch.__version__,
    }
    result = args.out / f"peers-{args.profile}{suffix}.json"
    rows: list[dict] = []
    t0 = time.perf_counter()
    deadline = time.monotonic() + args.time_budget_s if args.time_budget_s else None

    def save(setting_rows: list[dict]) -> None:
        meta["wall_s"] = time.perf_counter() - t0
        result.write_text(json.dumps({"meta": meta, "rows": rows + setting_rows}, indent=1))

    try:
        for network in profile.networks:
            base = ensure_base(network, profile.base_epochs[network], print, profile.data_root)
            if not base_is_trained(base, lambda line: print(line, file=sys.stderr)):
                return 2
            for budget in profile.budgets:
                rows += run_setting(network, base, budget, profile, args.out, print, save, deadline)
                save([])
    except UserError as exc:  # e.g. Fashion-MNIST missing: the message says how to install it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_tables(rows)
    if partial:
        print(f"\n{result} written in {time.perf_counter() - t0:.0f} s")
        return 0
    write_markdown(rows, meta, args.docs, args.images, args.out / "ab")
    print(f"\n{result}, {args.docs} and {args.images}/ written in {time.perf_counter() - t0:.0f} s")
    return 0


def read_results(paths: list[Path]) -> tuple[list[dict], dict]:
    """The rows of results JSONs together, with the first one's meta (the commits, dates and
    machines of all of them, where they differ).

    Raises:
        ValueError: a file is not a results JSON this benchmark wrote, the files come from
            different profiles, or two hold the same row (network, budget, seed and method).
    """
    rows: list[dict] = []
    metas: list[dict] = []
    seen: dict[tuple[Any, ...], Path] = {}
    for path in paths:
        try:
            saved = json.loads(path.read_text())
            file_rows, meta = list(saved["rows"]), dict(saved["meta"])
            keys = [(r["network"], r["budget"], r["seed"], r["method"]) for r in file_rows]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: not a results JSON this benchmark wrote ({type(exc).__name__}: {exc})"
            ) from exc
        if metas and meta.get("profile") != metas[0].get("profile"):
            raise ValueError(
                f"{path}: profile {meta.get('profile')}, {paths[0]}: profile "
                f"{metas[0].get('profile')}; report one profile at a time"
            )
        for key in keys:
            if key in seen:
                network, budget, seed, method = key
                raise ValueError(
                    f"{path} and {seen[key]} both hold {method} on {network} at B {budget:g}, "
                    f"seed {seed}; pass each seed's results once"
                )
            seen[key] = path
        rows += file_rows
        metas.append(meta)
    meta = dict(metas[0])
    for field_name in ("commit", "date", "machine", "command"):
        values = list(dict.fromkeys(str(m.get(field_name)) for m in metas))
        meta[field_name] = " + ".join(values) if len(values) > 1 else metas[0].get(field_name)
    return rows, meta


def _commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), for the record."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}+dirty" if head and git("status", "--porcelain", "--", "autoprune") else head


if __name__ == "__main__":
    sys.exit(main())
