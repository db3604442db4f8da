"""Shared fixtures.

Every test runs with ``AUTOPRUNE_HOME`` pointing at a fresh temporary folder, so nothing a
test writes (databases, base checkpoints, score caches) leaks into the clone or another test.
Tests that need a trained model share one session-scoped base checkpoint (ResNet-20 on the
bundled MNIST-5k, a few seconds of training).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(autouse=True)
def autoprune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "studies"
    monkeypatch.setenv("AUTOPRUNE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 base checkpoint trained on mnist5k (3 epochs; ~96-99% val accuracy)."""
    from autoprune.base import train_base

    out = tmp_path_factory.mktemp("base") / "resnet20-mnist5k.pt"
    train_base("resnet20", "mnist5k", 3.0, out, log=lambda _: None)
    return out
