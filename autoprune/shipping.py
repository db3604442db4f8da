"""What Ray workers get from the driver instead of a shared filesystem.

A worker on another node cannot open the driver's files, so the driver sends, once per search
through Ray's object store, a :class:`Shipment`: the base checkpoint's bytes (and their
sha256) and the base-model channel scores its score cache holds for that checkpoint, after
computing those of every data-driven criterion the search space offers (:func:`pack`). Each
worker process installs a shipment once (:func:`unpack`): it checks the bytes' sha256, loads
them with ``weights_only=True`` (so a shipment is read exactly like a file a user hands us),
and keeps the base in memory keyed by its weights hash.

Score cache on workers: a worker on the driver's node uses the driver's cache folder, as
before. A worker on another node uses a cache on its own disk (``$AUTOPRUNE_HOME/cache/scores``
when the node sets ``AUTOPRUNE_HOME``, else a folder in the node's temp dir), seeded with the
shipped scores; what it computes beyond them (a policy that drops blocks) stays on that node
and is not merged back: base scores depend only on their key, so a node that lacks an entry
computes it once, and ``replay``'s removed-channels check catches any difference.

Data is not shipped: bundled datasets load on every node, and a ``--data-root`` dataset must
be at that path on every node.

    >>> shipment = pack(objective, ["l1", "energy"], seed=0)  # doctest: +SKIP
    >>> worker_objective = unpack(shipment, objective, on_driver_node=False)  # on the worker
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from autoprune import criteria
from autoprune.base import BaseCheckpoint, is_state_dict, load_base
from autoprune.criteria.cache import ScoreCache
from autoprune.criteria.context import ScoringContext
from autoprune.errors import UserError
from autoprune.evaluate import (
    ObjectiveConfig,
    install_base,
    load_inputs,
    scoring_inputs,
    scoring_settings,
)
from autoprune.files import read_torch_bytes
from autoprune.groups import build_graph, current_views
from autoprune.policy import Policy
from autoprune.train import select_device


@dataclass(frozen=True)
class Shipment:
    """The driver's files a trial needs, as bytes: sent once per search through Ray."""

    base_checkpoint: str  # the driver's path of the base (messages; the applied policy's ref)
    base_bytes: bytes  # the base checkpoint file's content
    bytes_sha256: str  # sha256 of ``base_bytes``, checked by the worker before loading
    base_sha256: str  # the weights hash recorded in the checkpoint (what policies refer to)
    scores_bytes: bytes  # torch.save of {score-cache key: {group: scores}} for this base


_FIX = "rerun the search; if it repeats, check the driver's base checkpoint file"


def pack(objective: ObjectiveConfig, criterion_names: Iterable[str], seed: int) -> Shipment:
    """The shipment of a search: its base checkpoint and its cached base scores.

    Runs on the driver. Base scores of the data-driven criteria in ``criterion_names`` are
    computed first (into the driver's score cache, unless there already), so workers on other
    nodes need no calibration pass for a policy's first step.

    Raises:
        UserError: the base checkpoint cannot be read or is not a valid base checkpoint.
    """
    path = Path(objective.base_checkpoint)
    label = f"base checkpoint {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"{label} cannot be read ({exc.strerror or type(exc).__name__}): fix --base-checkpoint"
        ) from exc
    base = load_base(path, payload=read_torch_bytes(data, label, "fix --base-checkpoint"))
    precompute_base_scores(objective, base, criterion_names, seed)
    buffer = io.BytesIO()
    torch.save(ScoreCache(objective.cache_dir()).entries(base.sha256), buffer)
    return Shipment(
        base_checkpoint=str(path),
        base_bytes=data,
        bytes_sha256=hashlib.sha256(data).hexdigest(),
        base_sha256=base.sha256,
        scores_bytes=buffer.getvalue(),
    )


def precompute_base_scores(
    objective: ObjectiveConfig, base: BaseCheckpoint, criterion_names: Iterable[str], seed: int
) -> list[str]:
    """Put the base model's scores under each data-driven criterion in the score cache.

    Scored exactly as a trial's first pruning step scores them (same calibration set, seed
    and cache key, no dropped blocks), so those trials read them. Returns the criteria scored.
    """
    names = [
        name
        for name in dict.fromkeys(criterion_names)
        if not criteria.get(name).is_selection_rule and not criteria.get(name).data_free
    ]
    if not names:
        return []
    _, splits = load_inputs(replace(objective, base_sha256=None))
    model = base.build()
    graph = build_graph(model, base.spec.example_inputs())
    policy = Policy(model=base.spec, groups={}, seed=seed)
    settings = scoring_settings(policy, objective)
    inputs = scoring_inputs(
        objective, settings, splits, base.sha256, select_device(objective.device), seed
    )
    ctx = ScoringContext.create(model, graph, policy, inputs)
    views = current_views(model, graph)
    for name in names:
        ctx.scores(name, views)
    return names


# Shipments this process installed (by the bytes' sha256): each is checked and loaded once.
_unpacked: set[str] = set()


def unpack(shipment: Shipment, objective: ObjectiveConfig, on_driver_node: bool) -> ObjectiveConfig:
    """Install a shipment in this worker process; the objective config its trials use.

    The returned config names the installed base by its hash (so no trial opens the driver's
    path) and a score cache this node can write: the driver's own on its node, else a
    node-local one seeded with the shipped scores (see the module doc).

    Raises:
        UserError: the bytes do not match their sha256 or are not the base checkpoint sent.
    """
    cache_dir = objective.cache_dir() if on_driver_node else node_cache_dir()
    if shipment.bytes_sha256 not in _unpacked:
        label = f"base checkpoint {shipment.base_checkpoint} sent by the driver"
        if hashlib.sha256(shipment.base_bytes).hexdigest() != shipment.bytes_sha256:
            raise UserError(f"{label} was damaged in transfer (its sha256 differs): {_FIX}")
        payload = read_torch_bytes(shipment.base_bytes, label, _FIX)
        base = load_base(shipment.base_checkpoint, payload=payload)
        if base.sha256 != shipment.base_sha256:
            raise UserError(f"{label} holds other weights than the driver announced: {_FIX}")
        scores = read_torch_bytes(shipment.scores_bytes, "base scores sent by the driver", _FIX)
        if not isinstance(scores, dict):
            raise UserError(f"base scores sent by the driver are not a score table: {_FIX}")
        cache = ScoreCache(cache_dir)
        for key, entry in scores.items():
            if is_state_dict(entry) and cache.get(key) is None:  # {group: scores}, else skipped
                cache.put(str(key), entry)
        install_base(base)
        _unpacked.add(shipment.bytes_sha256)
    return replace(objective, base_sha256=shipment.base_sha256, score_cache=str(cache_dir))


def node_cache_dir() -> Path:
    """The score cache of a worker on a node other than the driver's: on that node's disk."""
    home = os.environ.get("AUTOPRUNE_HOME")
    if home:
        return Path(home).resolve() / "cache" / "scores"
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"autoprune-{user}" / "cache" / "scores"
