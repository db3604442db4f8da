"""The samplers a search can use: Optuna multi-objective samplers, by name.

All of them honour ``trial.set_constraint`` feasibility, so the MACs budget steers sampling.
Optuna is imported only when a sampler is built, so the names are cheap to list and validate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.errors import UserError


def _startup(trials: int) -> int:
    """Random start-up trials before a model-based sampler takes over: a third, 3 to 10."""
    return min(10, max(3, trials // 3))


def _tpe(seed: int, trials: int, concurrent: bool) -> Any:
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=concurrent, n_startup_trials=_startup(trials)
    )


def _tpe_univariate(seed: int, trials: int, concurrent: bool) -> Any:
    """TPE with one density per parameter (Optuna's default) instead of a joint one: the
    ablation of ``multivariate`` (docs/benchmarks.md)."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed, multivariate=False, constant_liar=concurrent, n_startup_trials=_startup(trials)
    )


def _tpe_spread(seed: int, trials: int, concurrent: bool) -> Any:
    """TPE whose random start-up is spent on searched candidates, not on the baselines
    (:mod:`autoprune.tpe`). Not the default: on the cpu profile at B 0.2 its winner was
    0.53 +- 0.34 pt below plain TPE's (docs/performance.md)."""
    from autoprune.tpe import SearchedStartupTPE

    return SearchedStartupTPE(
        seed=seed, multivariate=True, constant_liar=concurrent, n_startup_trials=_startup(trials)
    )


def _nsga2(seed: int, trials: int, concurrent: bool) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 3)))


def _gp(seed: int, trials: int, concurrent: bool) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup(trials))


def _random(seed: int, trials: int, concurrent: bool) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


# name -> factory(seed, trials, concurrent); the order is the CLI's.
SAMPLERS: dict[str, Callable[[int, int, bool], Any]] = {
    "tpe": _tpe,
    "tpe-spread": _tpe_spread,
    "tpe-univariate": _tpe_univariate,
    "nsga2": _nsga2,
    "gp": _gp,
    "random": _random,
}


def make_sampler(name: str, seed: int, trials: int, concurrent: bool) -> Any:
    """The sampler ``name``, seeded, sized for a study of ``trials`` trials.

    Args:
        name: a key of :data:`SAMPLERS`.
        seed: sampler seed.
        trials: the study's total of trials (sets start-up and population sizes).
        concurrent: candidates are asked while others are RUNNING (several trials at once, or
            a screened bracket): TPE then uses a constant liar.

    Raises:
        UserError: unknown name.
    """
    if name not in SAMPLERS:
        raise UserError(f"--sampler '{name}' is unknown; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, trials, concurrent)
