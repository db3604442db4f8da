"""Search spaces: which policy fields vary and how; define-by-run sampling; params -> Policy.

A space is a YAML file: a bundled one by name (package data under ``autoprune/search_spaces/``,
listed by ``autoprune spaces``) or any path::

    schema: autoprune.space/1
    description: what the space is for            # one line, shown by `autoprune spaces`
    granularity: stage              # group | stage | global: one rate (or multiplier) per unit
    allocation:                     # rates = a prior allocation x 2**multiplier per unit
      priors: [sensitivity, uniform, global]
      spread: 1.0                   # multipliers are sampled in [-spread, spread] (log2)
      floor: 0.0                    # a raised multiplier m > 0 adds floor x (2**m - 1) to every rate
    # rate: {low: 0.0, high: 0.8}   # instead of allocation: raw rates, sampled freely
    max_rate: 0.9                   # cap on any group's rate after projection
    criteria: [l1, fpgm, energy]    # allowed criteria
    criterion_per: stage            # group | stage | global: where a criterion is chosen
    target_macs_ratio: {relative_low: 0.6, explore: 0.25}  # upper end: --budget-flops; see below
    retrain: {epochs: [1.0], lr: {low: 0.01, high: 0.05, log: true}, regularizer: [none]}
    iterative_steps: [1, 2]
    class_threshold: {low: 1.0, high: 4.0}   # sampled when class_aware is chosen; null: never
    depth: {max_blocks_per_stage: 1}         # residual blocks that may be dropped per stage

A *stage* is the set of groups whose root layer has the same output resolution. The priors
(:mod:`autoprune.priors`) are allocations of the budget itself, so with all multipliers at 0 a
candidate is a baseline; the sampler moves stages away from them.

**Targets.** A search answers two questions: the best policy *at* the budget, and the front
below it. A share ``explore`` of the searched brackets (default a quarter) samples its target in
``[low, budget]`` for the front; all others target the budget itself, and baselines always do.
``relative_low: F`` puts ``low`` at ``F x budget``, so the targets follow any budget (the
bundled spaces do this); ``low: X`` is an absolute floor and must not exceed the budget. No
target is sampled below what the model reaches at ``max_rate``. A bundled space's ``max_rate``
gives way when the budget needs more (``--budget-flops 0.05``), and the search says so; a
``max_rate`` in a user's own file is kept, and a budget below its reach is refused.

Sampling (:meth:`SearchSpace.sample`) only calls ``trial.suggest_*``: it is pure and cheap, as
Ray Tune's define-by-run interface requires. :meth:`SearchSpace.to_policy` turns the sampled
params into a :class:`~autoprune.policy.Policy`; search and replay both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from autoprune import criteria
from autoprune.errors import UserError
from autoprune.files import parse_yaml, read_text_file
from autoprune.groups import build_graph, current_groups
from autoprune.modelspec import ModelSpec
from autoprune.policy import (
    DEFAULT_MAX_RATE,
    REGULARIZERS,
    BaseRef,
    ClassAware,
    Depth,
    Distill,
    GroupPolicy,
    Policy,
    Retrain,
    Schedule,
)

SCHEMA = "autoprune.space/1"
GRANULARITIES = ("group", "stage", "global")
CRITERION_PER = ("group", "stage", "global")
PRIORS = ("sensitivity", "uniform", "global")  # see autoprune.priors
DEFAULT_EXPLORE = 0.25


def spaces_dir() -> Path:
    """The bundled search spaces: package data ``autoprune/search_spaces/``, found through
    :mod:`importlib.resources` so an installed wheel has them as well as a source checkout."""
    return Path(str(resources.files("autoprune") / "search_spaces"))


def bundled_spaces() -> list[SearchSpace]:
    """Every bundled search space, loaded and validated, by name."""
    return [SearchSpace.load(p.stem) for p in sorted(spaces_dir().glob("*.yaml"))]


@dataclass
class Range:
    low: float
    high: float
    log: bool = False


@dataclass
class SearchSpace:
    """A validated search space (see module docstring for the YAML form)."""

    name: str
    granularity: str = "group"
    rate: Range = field(default_factory=lambda: Range(0.0, 0.8))
    max_rate: float = DEFAULT_MAX_RATE
    criteria: list[str] = field(default_factory=lambda: ["l1"])
    criterion_per: str = "group"
    target_low: float = 0.3
    relative_low: float | None = None  # set: the explore floor is relative_low x budget
    retrain_epochs: list[float] = field(default_factory=lambda: [1.0])
    retrain_lr: Range = field(default_factory=lambda: Range(0.01, 0.05, log=True))
    regularizers: list[str] = field(default_factory=lambda: ["none"])
    distill: Distill = field(default_factory=Distill)  # every candidate's fine-tune (not searched)
    iterative_steps: list[int] = field(default_factory=lambda: [1])
    class_threshold: Range | None = None
    max_blocks_per_stage: int = 0
    priors: list[str] = field(default_factory=list)  # empty: raw rates (``rate``) are sampled
    spread: float = 1.0  # log2 range of the per-unit multipliers on a prior's rates
    # what a raised multiplier (m > 0) adds to every rate of its unit: floor x (2**m - 1), so a
    # group its prior leaves whole (rate 0) can still be pruned; at m <= 0 rates are the prior's
    floor: float = 0.0
    explore: float = DEFAULT_EXPLORE  # share of searched brackets that sample a lower target
    source: str = ""  # the file it came from, for messages
    description: str = ""  # one line on what the space is for (``autoprune spaces``)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, name_or_path: str) -> SearchSpace:
        """Load a bundled space by name (see :func:`spaces_dir`) or a YAML file path, validating
        every field."""
        path = Path(name_or_path)
        if not path.suffix:
            path = spaces_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            bundled = sorted(p.stem for p in spaces_dir().glob("*.yaml"))
            raise UserError(
                f"search space '{name_or_path}' not found ({path}); give a YAML path or one of: {', '.join(bundled)}"
            )
        text = read_text_file(path, "search space")
        raw = parse_yaml(text, f"search space {path}", "search spaces")
        return cls.from_dict(raw, name=path.stem, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, name: str = "custom", source: str = "search space") -> SearchSpace:
        if not isinstance(raw, dict):
            raise UserError(f"{source}: a search space must be a mapping")
        allowed = {
            "schema", "granularity", "rate", "max_rate", "criteria", "criterion_per", "target_macs_ratio",
            "retrain", "iterative_steps", "class_threshold", "depth", "description", "allocation",
        }  # fmt: skip
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise UserError(
                f"{source}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        if raw.get("schema", SCHEMA) != SCHEMA:
            raise UserError(
                f"{source}: schema '{raw.get('schema')}' is not supported; expected '{SCHEMA}'"
            )
        space = cls(name=name, source=source)
        if raw.get("description") is not None:
            space.description = " ".join(str(raw["description"]).split())
        space.granularity = _choice(raw, "granularity", GRANULARITIES, space.granularity, source)
        space.criterion_per = _choice(
            raw, "criterion_per", CRITERION_PER, space.criterion_per, source
        )
        if "rate" in raw and raw.get("allocation") is not None:
            raise UserError(
                f"{source}: give either 'rate' (raw rates) or 'allocation' (priors x multipliers), not both"
            )
        if "rate" in raw:
            space.rate = _range(raw["rate"], "rate", source, 0.0, 0.99)
        if raw.get("allocation") is not None:
            _read_allocation(space, raw["allocation"], source)
        if "max_rate" in raw:
            space.max_rate = _float(raw["max_rate"], "max_rate", source, 0.01, 0.99)
        if "criteria" in raw:
            space.criteria = _criteria(raw["criteria"], source)
        if "target_macs_ratio" in raw:
            _read_target(space, raw["target_macs_ratio"], source)
        if "retrain" in raw:
            _read_retrain(space, raw["retrain"], source)
        if "iterative_steps" in raw:
            steps = _list(raw["iterative_steps"], "iterative_steps", source)
            if not all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 10 for s in steps
            ):
                raise UserError(f"{source}: field 'iterative_steps' must list integers in [1, 10]")
            space.iterative_steps = [int(s) for s in steps]
        if raw.get("class_threshold") is not None:
            space.class_threshold = _range(
                raw["class_threshold"], "class_threshold", source, 0.0, 1e6
            )
        if "depth" in raw and raw["depth"] is not None:
            space.max_blocks_per_stage = _max_blocks(raw["depth"], source)
        return space

    @property
    def bundled(self) -> bool:
        """Whether the space is one of the package's own files (the user did not write it)."""
        return bool(self.source) and Path(self.source).resolve().parent == spaces_dir().resolve()

    def explore_low(self, budget: float) -> float:
        """The lowest target an explore bracket samples at ``budget`` (before the model's floor)."""
        return self.relative_low * budget if self.relative_low is not None else self.target_low

    def check_budget(self, budget: float) -> None:
        if self.relative_low is None and self.target_low > budget:
            raise UserError(
                f"{self.source}: target_macs_ratio.low = {self.target_low} is above --budget-flops {budget}; "
                "lower it in the space file, write it as relative_low (a share of the budget), "
                "or raise the budget"
            )

    # ------------------------------------------------------------------ sampling (pure)

    def sample(self, trial: Any, ctx: SpaceContext, explore: bool = False) -> None:
        """Suggest every parameter of one candidate on an Optuna trial (define-by-run, no compute).

        Args:
            explore: sample the MACs target in ``[target_macs_ratio.low, budget]``; otherwise
                the candidate targets the budget (no ``target_macs_ratio`` param).
        """
        if explore:
            low = min(max(self.explore_low(ctx.budget), ctx.min_target), ctx.budget)
            trial.suggest_float("target_macs_ratio", low, ctx.budget)
        units = ctx.rate_units(self.granularity)
        if self.priors:
            if len(self.priors) > 1:
                trial.suggest_categorical("prior", self.priors)
            for unit in units:
                trial.suggest_float(f"scale:{unit}", -self.spread, self.spread)
        else:
            for unit in units:
                trial.suggest_float(
                    f"rate:{unit}", self.rate.low, self.rate.high, log=self.rate.log
                )
        chosen = set()
        for unit in ctx.criterion_units(self.criterion_per):
            chosen.add(trial.suggest_categorical(_criterion_param(unit), self.criteria))
        trial.suggest_categorical("retrain_epochs", self.retrain_epochs)
        trial.suggest_float(
            "retrain_lr", self.retrain_lr.low, self.retrain_lr.high, log=self.retrain_lr.log
        )
        trial.suggest_categorical("regularizer", self.regularizers)
        trial.suggest_categorical("iterative_steps", self.iterative_steps)
        if self.class_threshold is not None and "class_aware" in chosen:
            high = min(self.class_threshold.high, float(ctx.spec.num_classes))
            trial.suggest_float(
                "min_classes",
                min(self.class_threshold.low, high),
                high,
                log=self.class_threshold.log,
            )
        if self.max_blocks_per_stage > 0:
            for stage, blocks in ctx.block_ranking.items():
                trial.suggest_int(f"drop:{stage}", 0, min(self.max_blocks_per_stage, len(blocks)))

    def explores(self, bracket: int) -> bool:
        """Whether the ``bracket``-th searched bracket samples a lower target (evenly spread)."""
        if self.explore <= 0:
            return False
        return int((bracket + 1) * self.explore) > int(bracket * self.explore)

    # ------------------------------------------------------------------ baselines

    def baseline_lr(self) -> float:
        """The fine-tune lr baselines use: the middle of the space's lr range (geometric if log)."""
        r = self.retrain_lr
        return round(math.sqrt(r.low * r.high) if r.log else (r.low + r.high) / 2, 6)

    def baselines(self, ctx: SpaceContext, which: str) -> list[tuple[str, dict[str, Any]]]:
        """The baseline candidates of this space as ``(name, params)`` pairs, at the budget.

        ``default``: every group at the same rate with ``l1`` and with each data-driven
        criterion the space offers, global ranking and the sensitivity allocation (both with
        ``l1``); ``all``: every allocation with every scoring criterion the space offers;
        ``none``: no baseline. Only criteria and priors the space offers are used, so each
        baseline is a point of the space the sampler can learn from. Every baseline fine-tunes
        with the space's first epochs, regularizer and step count and its middle lr.
        """
        if which == "none":
            return []
        offered = [c for c in self.criteria if not criteria.get(c).is_selection_rule]
        if which == "all":
            uniform, ranked = offered, offered
        else:
            uniform = [c for c in offered if c == "l1" or not criteria.get(c).data_free]
            ranked = [c for c in offered if c == "l1"][:1]
        allocations = self.priors if self.priors else ["uniform"]
        plan = [("uniform", c) for c in uniform if "uniform" in allocations]
        plan += [(a, c) for a in ("global", "sensitivity") if a in allocations for c in ranked]
        out = []
        for allocation, criterion in plan:
            params: dict[str, Any] = {}
            units = ctx.rate_units(self.granularity)
            if self.priors:
                if len(self.priors) > 1:
                    params["prior"] = allocation
                params.update({f"scale:{u}": 0.0 for u in units})
            else:
                rate = min(max(0.5, self.rate.low), self.rate.high)
                params.update({f"rate:{u}": rate for u in units})
            params.update(
                {_criterion_param(u): criterion for u in ctx.criterion_units(self.criterion_per)}
            )
            params.update(
                retrain_epochs=self.retrain_epochs[0],
                retrain_lr=self.baseline_lr(),
                regularizer=self.regularizers[0],
                iterative_steps=self.iterative_steps[0],
            )
            if self.max_blocks_per_stage > 0:
                params.update({f"drop:{stage}": 0 for stage in ctx.block_ranking})
            if criterion == "class_aware" and self.class_threshold is not None:
                # A fixed policy: the middle of the threshold range, not a sampled one.
                high = min(self.class_threshold.high, float(ctx.spec.num_classes))
                low = min(self.class_threshold.low, high)
                params["min_classes"] = round(
                    math.sqrt(low * high) if self.class_threshold.log else (low + high) / 2, 6
                )
            out.append((f"{allocation}-{criterion}", params))
        return out

    # ------------------------------------------------------------------ params -> policy

    def allocated(self, prior_rate: float, params: dict[str, Any], unit: str) -> float:
        """A group's rate before projection: its prior's rate moved by its unit's multiplier.

        ``prior x 2**m``, plus ``floor x (2**m - 1)`` when ``m > 0``: at ``m = 0`` the rate is the
        prior's (a baseline), and without a floor a prior rate of 0 stays 0 at every ``m``.
        """
        factor = 2.0 ** float(params[f"scale:{unit}"])
        return prior_rate * factor + self.floor * max(factor - 1.0, 0.0)

    def to_policy(self, params: dict[str, Any], ctx: SpaceContext) -> Policy:
        """The policy a set of sampled params stands for (before budget projection)."""
        dropped: list[str] = []
        for stage, blocks in ctx.block_ranking.items():
            dropped += blocks[: int(params.get(f"drop:{stage}", 0))]
        groups: dict[str, GroupPolicy] = {}
        for group in ctx.group_names:
            if any(group.startswith(block + ".") for block in dropped):
                continue  # the group's layers are gone with their block
            unit = ctx.unit_of(group, self.granularity)
            criterion = params.get(
                _criterion_param(ctx.unit_of(group, self.criterion_per)),
                params.get("criterion", self.criteria[0]),
            )
            if self.priors:
                prior = ctx.priors[str(params.get("prior", self.priors[0]))]
                rate = min(self.max_rate, self.allocated(prior.get(group, 0.0), params, unit))
            else:
                rate = float(params[f"rate:{unit}"])
            groups[group] = GroupPolicy(rate=rate, criterion=str(criterion))
        min_classes = params.get("min_classes")
        return Policy(
            model=ctx.spec,
            groups=groups,
            target_macs_ratio=float(params.get("target_macs_ratio", ctx.budget)),
            channel_multiple=ctx.channel_multiple,
            base=ctx.base,
            depth=Depth(drop_blocks=dropped),
            class_aware=ClassAware(
                min_classes=float(min_classes) if min_classes is not None else None
            ),
            schedule=Schedule(iterative_steps=int(params.get("iterative_steps", 1))),
            retrain=Retrain(
                epochs=float(params.get("retrain_epochs", 1.0)),
                lr=float(params.get("retrain_lr", 0.02)),
                regularizer=str(params.get("regularizer", "none")),
                distill=replace(self.distill),
            ),
            seed=ctx.seed,
        )


@dataclass
class SpaceContext:
    """What sampling and params->policy need to know about the base model (built once per study)."""

    spec: ModelSpec
    budget: float
    group_names: list[str]
    group_stage: dict[str, str]  # group -> stage key (output resolution of its root layer)
    block_ranking: dict[str, list[str]] = field(
        default_factory=dict
    )  # stage -> blocks, lowest score first
    base: Any = None  # BaseRef of the policies
    seed: int = 0
    priors: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> group -> rate
    channel_multiple: int = 1  # --channel-multiple: pruned groups keep a multiple of it
    min_target: float = 0.0  # the lowest MACs ratio a policy reaches (explore targets stay above)

    def rate_units(self, granularity: str) -> list[str]:
        if granularity == "group":
            return list(self.group_names)
        if granularity == "stage":
            return sorted(set(self.group_stage.values()))
        return ["global"]

    def criterion_units(self, criterion_per: str) -> list[str]:
        """The units a criterion is chosen for: every group, every stage, or one (``global``)."""
        return self.rate_units(criterion_per)

    def unit_of(self, group: str, granularity: str) -> str:
        if granularity == "group":
            return group
        if granularity == "stage":
            return self.group_stage[group]
        return "global"


def build_context(
    base: Any, budget: float, seed: int, block_ranking: dict[str, list[str]] | None = None
) -> SpaceContext:
    """Trace the base model once: its groups, their stages (output resolution of the root layer)."""
    import torch

    model = base.build()
    inputs = base.spec.example_inputs()
    names = list(current_groups(model, build_graph(model, inputs)))
    sizes: dict[str, str] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: sizes.__setitem__(
                n, "x".join(str(s) for s in out.shape[2:]) or "flat"
            )
        )
        for n in names
    ]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return SpaceContext(
        spec=base.spec,
        budget=budget,
        group_names=names,
        group_stage={n: f"res{sizes.get(n, 'flat')}" for n in names},
        block_ranking=block_ranking or {},
        base=BaseRef(checkpoint=str(base.path), sha256=base.sha256),
        seed=seed,
    )


def _read_allocation(space: SearchSpace, a: Any, source: str) -> None:
    """``allocation: {priors: [...], spread: X, floor: Y}``: the priors sampled around, how far,
    and the floor a raised multiplier lifts every rate by."""
    if not isinstance(a, dict) or set(a) - {"priors", "spread", "floor"} or "priors" not in a:
        raise UserError(
            f"{source}: field 'allocation' must be {{priors: [{', '.join(PRIORS)}], spread: X}}"
            " (and optionally floor: Y)"
        )
    names = _list(a["priors"], "allocation.priors", source)
    bad = [str(n) for n in names if n not in PRIORS]
    if bad:
        raise UserError(
            f"{source}: field 'allocation.priors' has unknown {', '.join(bad)}; allowed: {', '.join(PRIORS)}"
        )
    space.priors = list(dict.fromkeys(str(n) for n in names))
    space.spread = _float(a.get("spread", space.spread), "allocation.spread", source, 0.0, 4.0)
    space.floor = _float(a.get("floor", space.floor), "allocation.floor", source, 0.0, 0.5)


def _criteria(names: Any, source: str) -> list[str]:
    """``criteria: [...]``: registered criterion names, at least one."""
    known = [*criteria.available()]
    if not isinstance(names, list) or not names:
        raise UserError(
            f"{source}: field 'criteria' must be a non-empty list; allowed: {', '.join(known)}"
        )
    bad = [str(n) for n in names if n not in known]
    if bad:
        raise UserError(
            f"{source}: field 'criteria' has unknown {', '.join(bad)}; allowed: {', '.join(known)}"
        )
    return [str(n) for n in names]


def _read_target(space: SearchSpace, t: Any, source: str) -> None:
    """``target_macs_ratio``: the explore floor (absolute or relative to the budget) and share."""
    if (
        not isinstance(t, dict)
        or set(t) - {"low", "relative_low", "explore"}
        or {"low", "relative_low"} <= set(t)
    ):
        raise UserError(
            f"{source}: field 'target_macs_ratio' must be {{low: X, explore: SHARE}} or "
            "{relative_low: SHARE OF THE BUDGET, explore: SHARE} (the high end is "
            "--budget-flops)"
        )
    space.target_low = _float(
        t.get("low", space.target_low), "target_macs_ratio.low", source, 0.01, 1.0
    )
    if "relative_low" in t:
        space.relative_low = _float(
            t["relative_low"], "target_macs_ratio.relative_low", source, 0.01, 1.0
        )
    space.explore = _float(
        t.get("explore", space.explore), "target_macs_ratio.explore", source, 0.0, 1.0
    )


def _read_retrain(space: SearchSpace, r: Any, source: str) -> None:
    """``retrain``: fine-tune epochs, learning-rate range, regularizers and distillation."""
    if not isinstance(r, dict) or set(r) - {"epochs", "lr", "regularizer", "distill"}:
        raise UserError(
            f"{source}: field 'retrain' takes epochs (list), lr ({{low, high, log}}), "
            "regularizer (list) and distill ({alpha, temperature})"
        )
    if "distill" in r:
        d = r["distill"]
        if not isinstance(d, dict) or set(d) - {"alpha", "temperature"}:
            raise UserError(
                f"{source}: field 'retrain.distill' takes alpha (0..1) and temperature (> 0)"
            )
        space.distill = Distill(
            alpha=_float(d.get("alpha", 0.0), "retrain.distill.alpha", source, 0.0, 1.0),
            temperature=_float(
                d.get("temperature", 4.0), "retrain.distill.temperature", source, 1e-3, 1e3
            ),
        )
    if "epochs" in r:
        space.retrain_epochs = [
            _float(e, "retrain.epochs", source, 0.0, 1000.0)
            for e in _list(r["epochs"], "retrain.epochs", source)
        ]
    if "lr" in r:
        space.retrain_lr = _range(r["lr"], "retrain.lr", source, 1e-6, 10.0)
    if "regularizer" in r:
        regs = [str(v) for v in _list(r["regularizer"], "retrain.regularizer", source)]
        bad = [v for v in regs if v not in REGULARIZERS]
        if bad:
            raise UserError(
                f"{source}: field 'retrain.regularizer' has unknown {', '.join(bad)}; "
                f"allowed: {', '.join(REGULARIZERS)}"
            )
        space.regularizers = regs


def _max_blocks(d: Any, source: str) -> int:
    """``depth: {max_blocks_per_stage: N}``: residual blocks a stage may lose."""
    if not isinstance(d, dict) or set(d) - {"max_blocks_per_stage"}:
        raise UserError(
            f"{source}: field 'depth' takes only max_blocks_per_stage (an integer >= 0)"
        )
    m = d.get("max_blocks_per_stage", 0)
    if not isinstance(m, int) or isinstance(m, bool) or m < 0:
        raise UserError(f"{source}: field 'depth.max_blocks_per_stage' must be an integer >= 0")
    return m


def _criterion_param(unit: str) -> str:
    return "criterion" if unit == "global" else f"criterion:{unit}"


def _choice(raw: dict, key: str, allowed: tuple[str, ...], default: str, source: str) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise UserError(
            f"{source}: field '{key}' = {value!r} is not allowed; allowed: {', '.join(allowed)}"
        )
    return str(value)


def _float(value: Any, key: str, source: str, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not low <= float(value) <= high
    ):
        raise UserError(f"{source}: field '{key}' = {value!r} must be a number in [{low}, {high}]")
    return float(value)


def _range(raw: Any, key: str, source: str, low: float, high: float) -> Range:
    if (
        not isinstance(raw, dict)
        or set(raw) - {"low", "high", "log"}
        or "low" not in raw
        or "high" not in raw
    ):
        raise UserError(f"{source}: field '{key}' must be {{low: X, high: Y, log: false}}")
    r = Range(
        _float(raw["low"], f"{key}.low", source, low, high),
        _float(raw["high"], f"{key}.high", source, low, high),
        bool(raw.get("log", False)),
    )
    if r.low > r.high:
        raise UserError(f"{source}: field '{key}' has low {r.low} > high {r.high}")
    if r.log and r.low <= 0:
        raise UserError(f"{source}: field '{key}' is log-scaled, so low must be > 0")
    return r


def _list(value: Any, key: str, source: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{source}: field '{key}' must be a non-empty list")
    return value
