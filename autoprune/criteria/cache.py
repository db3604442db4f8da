"""On-disk cache of base-model channel scores.

Scores of the unpruned base model depend only on (base weights, criterion, calibration set,
seed), so every trial of a study that uses a data-driven criterion on its first pruning step
can read them instead of running calibration passes again. Entries are one file each, written
atomically, so concurrent trial workers on one host never see a half-written file. A file's
name starts with its base model's hash, so the driver can send a base's entries to workers on
other nodes (:mod:`autoprune.shipping`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from autoprune.errors import UserError
from autoprune.files import read_torch_file, save_torch


class ScoreCache:
    """Directory of ``{group name: score tensor}`` files keyed by a content hash."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(base_sha256: str, criterion: str, calibration_spec: str, seed: int) -> str:
        raw = f"{base_sha256}|{criterion}|{calibration_spec}|{seed}"
        digest = hashlib.sha256(raw.encode()).hexdigest()[:20]
        return f"{ScoreCache._base_prefix(base_sha256)}{criterion}-{digest}"

    @staticmethod
    def _base_prefix(base_sha256: str) -> str:
        return f"{base_sha256[:16]}-"

    def entries(self, base_sha256: str) -> dict[str, dict[str, torch.Tensor]]:
        """Every readable entry of one base model, by key (what the driver sends to workers)."""
        if not self.root.is_dir():
            return {}
        found = {}
        for path in sorted(self.root.glob(f"{self._base_prefix(base_sha256)}*.pt")):
            scores = self.get(path.stem)
            if scores is not None:
                found[path.stem] = scores
        return found

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            scores = read_torch_file(path, "score cache entry", "it is computed again")
        except UserError:
            return None  # a damaged or foreign entry is recomputed, never trusted
        if not isinstance(scores, dict) or not all(
            isinstance(v, torch.Tensor) for v in scores.values()
        ):
            return None
        return scores

    def put(self, key: str, scores: dict[str, torch.Tensor]) -> None:
        save_torch(self._path(key), {k: v.detach().cpu() for k, v in scores.items()})
