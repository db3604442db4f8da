"""Policy: the unit the service searches, stores, exports and replays.

A policy is plain data with a lossless YAML form (``schema: autoprune.policy/1``)::

    >>> from autoprune.policy import Policy
    >>> p = Policy.from_yaml('''
    ... schema: autoprune.policy/1
    ... model: {name: resnet20, num_classes: 10, input_shape: [1, 28, 28]}
    ... target_macs_ratio: 0.5
    ... groups:
    ...   layer1.0.conv1: {rate: 0.3, criterion: l1}
    ... ''')
    >>> p.retrain.epochs, p.schedule.iterative_steps
    (1.0, 1)
    >>> Policy.from_yaml(p.to_yaml()) == p
    True

Only ``model`` and ``groups`` are required; every other section has defaults. Structural
validation (types, ranges) happens on load; validation against a concrete model (group names)
is :meth:`Policy.validate_against`, and criterion names are checked by the registry
(:func:`autoprune.criteria.check_policy`). Importing this module loads no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import UserError
from autoprune.files import parse_yaml, read_text_file, write_text
from autoprune.modelspec import ModelSpec

SCHEMA = "autoprune.policy/1"
# Cap on any group's pruning rate during projection, unless a policy or space sets its own.
DEFAULT_MAX_RATE = 0.9
# A policy lands within this much under its target_macs_ratio (the projection's tolerance);
# a trial that does is "at the budget".
TARGET_TOLERANCE = 0.01
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
REGULARIZERS = ("none", "orthogonal")


@dataclass
class Distill:
    """Knowledge distillation from the unpruned base during a fine-tune (Hinton et al., 2015).

    The loss is ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher || p_student)``
    with both distributions softened by temperature ``T``; ``alpha`` 0 is plain cross-entropy.
    """

    alpha: float = 0.0  # weight of the distillation term, in [0, 1]
    temperature: float = 4.0  # softening of both distributions, > 0

    def validate(self, where: str = "retrain.distill") -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"{where}.alpha = {self.alpha} must be in [0, 1] (0: no distillation)")
        if self.temperature <= 0:
            raise UserError(f"{where}.temperature = {self.temperature} must be > 0")

    @property
    def on(self) -> bool:
        return self.alpha > 0


@dataclass
class Retrain:
    """A (re)training recipe: a policy's ``retrain`` section, and what :func:`fit` runs.

    The one definition of these settings: policies, search spaces, base training and replay's
    longer fine-tune all use it, and :meth:`validate` is the one check of its values.
    """

    epochs: float = 1.0  # passes over the training split; fractions allowed
    lr: float = 0.02  # peak learning rate
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, Nesterov) or "adam" (AdamW)
    schedule: str = "cosine"  # "cosine" (per step, to 0), "step" (x0.1 at 50% and 75%), "constant"
    regularizer: str = "none"  # "none" or "orthogonal" (kernel orthogonality on 3x3 convs)
    regularizer_weight: float = 0.01  # weight of the regulariser term in the loss
    distill: Distill = field(default_factory=Distill)  # from the unpruned base; off by default

    def validate(self, where: str = "retrain") -> None:
        """Raise a :class:`UserError` naming ``where`` (e.g. the policy file) for a bad value."""
        self.distill.validate(f"{where}.distill")
        if self.epochs < 0:
            raise UserError(f"{where}.epochs = {self.epochs} must be >= 0 (0: no fine-tune)")
        if self.lr <= 0:
            raise UserError(f"{where}.lr = {self.lr} must be > 0")
        for key, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("regularizer", REGULARIZERS),
        ):
            value = getattr(self, key)
            if value not in allowed:
                raise UserError(
                    f"{where}.{key} '{value}' is unknown; allowed: {', '.join(allowed)}"
                )


@dataclass
class GroupPolicy:
    """What to do with one DepGraph group."""

    rate: float  # share of the group's channels to remove, in [0, 1)
    criterion: str = "l1"  # name in the criteria registry; "auto" = loss-aware selection
    chosen_from: list[str] | None = (
        None  # set on applied policies when criterion was picked by `auto`
    )
    # channels removed at each iterative step, set on applied policies whose steps did not
    # split the rate evenly (a class threshold, or the budget's last-step settling), so a
    # replay removes the same channels at the same steps
    steps: list[int] | None = None
    # the criterion of each iterative step, set on applied policies where `auto`, re-selecting
    # at every step, chose differently at different steps (``criterion`` is the first step's)
    step_criteria: list[str] | None = None


@dataclass
class BaseRef:
    """Which base checkpoint the policy was found for."""

    checkpoint: str | None = None  # path of the base checkpoint
    sha256: str | None = None  # checked against the checkpoint's weights when present


@dataclass
class Depth:
    """Discriminative layer pruning: residual blocks removed before channel pruning."""

    drop_blocks: list[str] = field(default_factory=list)  # module names, e.g. "layer3.7"


@dataclass
class ClassAware:
    """Class-importance threshold of the class-aware criterion."""

    min_classes: float | None = None  # channels important for fewer classes are removal candidates
    samples_per_class: int = 10  # images per class used to count


@dataclass
class LossAware:
    """Settings of ``criterion: auto`` (loss-aware selection among scoring criteria)."""

    pool: list[str] = field(default_factory=lambda: ["l1", "l2", "fpgm", "cos"])  # candidates
    images: int = 64  # calibration images the candidates' losses are measured on


@dataclass
class Scoring:
    """What decides which channels go besides rates and criteria; recorded so replay repeats it.

    ``None`` takes the value of the run applying the policy (``--calibration-images``, the
    search space's ``max_rate``); an applied policy, as a search stores and exports it, always
    has all three filled in, so ``replay`` scores on the same calibration set and projects with
    the same cap as the trial did.
    """

    calibration_images: int | None = None  # images data-driven criteria score on
    calibration_batch_size: int | None = None
    max_rate: float | None = None  # cap on any group's rate during budget projection


@dataclass
class Schedule:
    """How pruning is spread over steps."""

    iterative_steps: int = 1  # prune in k steps, rescoring channels between steps
    finetune_between_steps: float = 0.0  # epochs of fine-tuning after each intermediate step


@dataclass
class Policy:
    """A complete pruning policy for one model (see module docstring for the YAML form)."""

    model: ModelSpec
    groups: dict[str, GroupPolicy]
    target_macs_ratio: float | None = None  # None: apply the rates as written
    # every pruned group keeps a multiple of this many channels (a group it would leave with
    # fewer keeps all); 8 or 16 is what GPU/NPU kernels run fastest on. 1: any count
    channel_multiple: int = 1
    base: BaseRef = field(default_factory=BaseRef)
    depth: Depth = field(default_factory=Depth)
    class_aware: ClassAware = field(default_factory=ClassAware)
    loss_aware: LossAware = field(default_factory=LossAware)
    schedule: Schedule = field(default_factory=Schedule)
    retrain: Retrain = field(default_factory=Retrain)
    scoring: Scoring = field(default_factory=Scoring)
    seed: int = 0
    measured: dict[str, float] = field(default_factory=dict)  # written by the service
    # sha256 of the channels and blocks the trial removed (written by the service); replay
    # refuses to hand back a model whose removed channels differ
    removed_sha256: str | None = None

    # ------------------------------------------------------------------ dict / YAML

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA, "model": self.model.to_dict()}
        if self.base.checkpoint is not None or self.base.sha256 is not None:
            out["base"] = {k: v for k, v in vars(self.base).items() if v is not None}
        if self.target_macs_ratio is not None:
            out["target_macs_ratio"] = self.target_macs_ratio
        if self.channel_multiple != 1:
            out["channel_multiple"] = self.channel_multiple
        groups: dict[str, Any] = {}
        for name, g in self.groups.items():
            entry: dict[str, Any] = {"rate": g.rate, "criterion": g.criterion}
            if g.chosen_from is not None:
                entry["chosen_from"] = list(g.chosen_from)
            if g.steps is not None:
                entry["steps"] = list(g.steps)
            if g.step_criteria is not None:
                entry["step_criteria"] = list(g.step_criteria)
            groups[name] = entry
        out["groups"] = groups
        if self.depth.drop_blocks:
            out["depth"] = {"drop_blocks": list(self.depth.drop_blocks)}
        if self.class_aware != ClassAware():
            out["class_aware"] = dict(vars(self.class_aware))
        if self.loss_aware != LossAware():
            out["loss_aware"] = {
                "pool": list(self.loss_aware.pool),
                "images": self.loss_aware.images,
            }
        out["schedule"] = dict(vars(self.schedule))
        out["retrain"] = {k: v for k, v in vars(self.retrain).items() if k != "distill"}
        if self.retrain.distill.on:  # written only when on, so older policies read the same
            out["retrain"]["distill"] = dict(vars(self.retrain.distill))
        if self.scoring != Scoring():
            out["scoring"] = {k: v for k, v in vars(self.scoring).items() if v is not None}
        out["seed"] = self.seed
        if self.measured:
            out["measured"] = dict(self.measured)
        if self.removed_sha256 is not None:
            out["removed_sha256"] = self.removed_sha256
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=120)

    def save(self, path: str | Path) -> None:
        """Write the YAML atomically: a reader (or a second writer) never sees half a file."""
        write_text(path, self.to_yaml())

    @classmethod
    def from_yaml(cls, text: str, source: str = "policy") -> Policy:
        raw = parse_yaml(text, source, "policies")  # one line for bad YAML or object tags
        return cls.from_dict(raw, source)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        return cls.from_yaml(read_text_file(path, "policy file"), source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "policy") -> Policy:
        if not isinstance(raw, dict):
            raise UserError(
                f"{source}: a policy must be a mapping with at least 'model' and 'groups'"
            )
        schema = raw.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise UserError(f"{source}: schema '{schema}' is not supported; expected '{SCHEMA}'")
        allowed = {
            "schema",
            "model",
            "base",
            "target_macs_ratio",
            "channel_multiple",
            "groups",
            "depth",
            "class_aware",
            "loss_aware",
            "schedule",
            "retrain",
            "scoring",
            "seed",
            "measured",
            "removed_sha256",
        }
        _reject_unknown(raw, allowed, source)
        if "model" not in raw:
            raise UserError(
                f"{source}: field 'model' is missing; give {{name, num_classes, input_shape}}"
            )
        try:
            model = ModelSpec.from_dict(raw["model"])
        except UserError as exc:
            raise UserError(f"{source}: field 'model': {exc}") from exc
        groups_raw = raw.get("groups") or {}
        if not isinstance(groups_raw, dict):
            raise UserError(f"{source}: 'groups' must map group names to {{rate, criterion}}")
        groups: dict[str, GroupPolicy] = {}
        for name, entry in groups_raw.items():
            where = f"{source}: groups.{name}"
            if isinstance(entry, (int, float)):
                entry = {"rate": entry}
            if not isinstance(entry, dict):
                raise UserError(f"{where} must be a mapping like {{rate: 0.3, criterion: l1}}")
            _reject_unknown(
                entry, {"rate", "criterion", "chosen_from", "steps", "step_criteria"}, where
            )
            rate = _number(entry.get("rate", 0.0), f"{where}.rate")
            if not 0.0 <= rate < 1.0:
                raise UserError(
                    f"{where}.rate = {rate} is outside [0, 1): a group keeps at least one channel"
                )
            chosen = entry.get("chosen_from")
            if chosen is not None and not isinstance(chosen, list):
                raise UserError(
                    f"{where}.chosen_from must be a list of criterion names, got {chosen!r}"
                )
            steps = entry.get("steps")
            if steps is not None and (
                not isinstance(steps, list)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in steps)
            ):
                raise UserError(
                    f"{where}.steps must be a list of channel counts >= 0, one per iterative step, "
                    f"got {steps!r}"
                )
            per_step = entry.get("step_criteria")
            if per_step is not None and (
                not isinstance(per_step, list)
                or not all(isinstance(c, str) and c != "auto" for c in per_step)
            ):
                raise UserError(
                    f"{where}.step_criteria must be a list of scoring criterion names, one per "
                    f"iterative step, got {per_step!r}"
                )
            groups[str(name)] = GroupPolicy(
                rate=rate,
                criterion=str(entry.get("criterion", "l1")),
                chosen_from=[str(c) for c in chosen] if chosen is not None else None,
                steps=list(steps) if steps is not None else None,
                step_criteria=list(per_step) if per_step is not None else None,
            )
        target = raw.get("target_macs_ratio")
        if target is not None:
            target = _number(target, f"{source}: target_macs_ratio")
            if not 0.0 < target <= 1.0:
                raise UserError(f"{source}: target_macs_ratio = {target} must be in (0, 1]")
        policy = cls(
            model=model,
            groups=groups,
            target_macs_ratio=target,
            channel_multiple=_integer(
                raw.get("channel_multiple", 1), f"{source}: channel_multiple"
            ),
            base=_section(BaseRef, raw.get("base"), f"{source}: base"),
            depth=_section(Depth, raw.get("depth"), f"{source}: depth"),
            class_aware=_section(ClassAware, raw.get("class_aware"), f"{source}: class_aware"),
            loss_aware=_section(LossAware, raw.get("loss_aware"), f"{source}: loss_aware"),
            schedule=_section(Schedule, raw.get("schedule"), f"{source}: schedule"),
            retrain=_retrain(raw.get("retrain"), f"{source}: retrain"),
            scoring=_section(Scoring, raw.get("scoring"), f"{source}: scoring"),
            seed=_integer(raw.get("seed", 0), f"{source}: seed"),
            measured=_measured(raw.get("measured"), f"{source}: measured"),
            removed_sha256=_digest(raw.get("removed_sha256"), f"{source}: removed_sha256"),
        )
        policy._check_sections(source)
        return policy

    def check_step_criteria(self, source: str = "policy") -> None:
        """Each ``step_criteria`` names one criterion per iterative step and stands beside the
        criterion ``auto`` chose, never beside ``auto`` itself (names are the registry's check)."""
        for name, g in self.groups.items():
            if g.step_criteria is None:
                continue
            if g.criterion == "auto":
                raise UserError(
                    f"{source}: groups.{name} has criterion 'auto' and step_criteria: "
                    "step_criteria records what auto chose; drop it to choose again, or name "
                    "the first step's criterion instead of auto"
                )
            if len(g.step_criteria) != self.schedule.iterative_steps:
                raise UserError(
                    f"{source}: groups.{name}.step_criteria names {len(g.step_criteria)} criteria "
                    f"for {self.schedule.iterative_steps} iterative steps: give one per step, or "
                    "drop it to use the group's criterion at every step"
                )

    def _check_sections(self, source: str) -> None:
        if self.schedule.iterative_steps < 1:
            raise UserError(
                f"{source}: schedule.iterative_steps = {self.schedule.iterative_steps} must be >= 1"
            )
        self.retrain.validate(f"{source}: retrain")
        self.check_step_criteria(source)
        if not 1 <= self.channel_multiple <= 256:
            raise UserError(
                f"{source}: channel_multiple = {self.channel_multiple} must be in [1, 256] (e.g. 8)"
            )
        la = self.loss_aware
        if (
            not isinstance(la.pool, list)
            or not la.pool
            or not all(isinstance(c, str) for c in la.pool)
        ):
            raise UserError(
                f"{source}: loss_aware.pool must be a non-empty list of criterion names, got {la.pool!r}"
            )
        if not isinstance(la.images, int) or isinstance(la.images, bool) or la.images < 1:
            raise UserError(f"{source}: loss_aware.images = {la.images!r} must be an integer >= 1")
        sc = self.scoring
        for key in ("calibration_images", "calibration_batch_size"):
            value = getattr(sc, key)
            if value is not None and value < 1:
                raise UserError(f"{source}: scoring.{key} = {value} must be >= 1")
        if sc.max_rate is not None and not 0.0 < sc.max_rate < 1.0:
            raise UserError(
                f"{source}: scoring.max_rate = {sc.max_rate} must be in (0, 1): a group keeps a channel"
            )
        mc = self.class_aware.min_classes
        if mc is not None and not 0 <= mc <= self.model.num_classes:
            raise UserError(
                f"{source}: class_aware.min_classes = {mc} must be in [0, {self.model.num_classes}] (the number of classes)"
            )

    # ------------------------------------------------------------------ validation against a model

    def validate_against(
        self, spec: ModelSpec, group_names: list[str] | None = None, base_sha256: str | None = None
    ) -> None:
        """Check that this policy can be applied to a model whose groups are ``group_names``.

        ``group_names=None`` skips the group check (used before blocks are dropped, when the
        final group list is not known yet).

        Criterion names are checked where the policy meets the registry
        (:func:`autoprune.criteria.check_policy`), so this data class needs no torch.

        Raises:
            UserError: the policy was written for another model, names an unknown group, or
                its base hash does not match ``base_sha256``.
        """
        if (self.model.name, self.model.num_classes, tuple(self.model.input_shape)) != (
            spec.name,
            spec.num_classes,
            tuple(spec.input_shape),
        ):
            raise UserError(
                f"policy model {self.model.to_dict()} does not match the base checkpoint's model "
                f"{spec.to_dict()}: the policy is for another model; use it with the base checkpoint "
                "it was searched on, or search again for this one"
            )
        unknown = [g for g in self.groups if group_names is not None and g not in group_names]
        if unknown:
            raise UserError(
                f"policy groups {', '.join(unknown)}: {spec.name} has no such group; "
                f"allowed groups: {', '.join(group_names or [])} (see `autoprune inspect --model {spec.name}`)"
            )
        if (
            base_sha256 is not None
            and self.base.sha256 is not None
            and self.base.sha256 != base_sha256
        ):
            raise UserError(
                f"policy base.sha256 {self.base.sha256[:12]}... does not match the base checkpoint's {base_sha256[:12]}...: "
                "the policy was searched on other weights"
            )


def _reject_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(
            f"{where}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )


def _number(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(float(value))
    ):
        raise UserError(f"{where} = {value!r} must be a finite number")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # exact: a float would round seeds above 2**53
    number = _number(value, where)
    if not number.is_integer():
        raise UserError(f"{where} = {value!r} must be a whole number")
    return int(number)


def _measured(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must map metric names to numbers, e.g. {{macs_ratio: 0.45}}")
    out: dict[str, float] = {}
    for key, value in raw.items():
        # Measured values may be NaN or infinite (a diverged fine-tune); only their type is checked.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}.{key} = {value!r} must be a number")
        out[str(key)] = float(value)
    return out


# Fields whose default is None but whose value, when given, is a number.
_OPTIONAL_NUMBERS: dict[str, type] = {
    "min_classes": float,
    "calibration_images": int,
    "calibration_batch_size": int,
    "max_rate": float,
}


def _digest(value: Any, where: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    hexpart = text.removeprefix("sha256:")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise UserError(
            f"{where} = {value!r} must be 'sha256:' and 64 hex digits (written by autoprune)"
        )
    return text


def _retrain(raw: Any, where: str) -> Retrain:
    """The ``retrain`` section, with its nested ``distill: {alpha, temperature}``."""
    if not isinstance(raw, dict) or "distill" not in raw:
        return _section(Retrain, raw, where)
    rest = {k: v for k, v in raw.items() if k != "distill"}
    retrain: Retrain = _section(Retrain, rest, where)
    retrain.distill = _section(Distill, raw["distill"], f"{where}.distill")
    return retrain


def _section(cls: Any, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping")
    names = {f.name: f for f in fields(cls)}
    _reject_unknown(raw, set(names), where)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        if isinstance(default, bool):
            values[key] = bool(value)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(default, int):
                values[key] = _integer(value, f"{where}.{key}")
            else:
                values[key] = _number(value, f"{where}.{key}")
        elif isinstance(default, list):
            if not isinstance(value, list):
                raise UserError(f"{where}.{key} must be a list")
            values[key] = [str(v) for v in value]
        elif key in _OPTIONAL_NUMBERS:
            check = _integer if _OPTIONAL_NUMBERS[key] is int else _number
            values[key] = None if value is None else check(value, f"{where}.{key}")
        else:
            values[key] = None if value is None else str(value)
    return cls(**values)
