"""Shared fixtures.

Every test runs with ``AUTOPRUNE_HOME`` pointing at a fresh temporary folder, so nothing a
test writes (databases, base checkpoints, score caches) leaks into the clone or another test.
Tests that need a trained model share one session-scoped base checkpoint (ResNet-20 on the
bundled MNIST-5k, a few seconds of training).
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# ``make test`` runs two pytest-xdist workers, one per core of the machines this project is
# tested on. Each keeps torch on one thread (and so does every process a test starts: CLI
# children, Ray workers, the searches' trials), as two workers on two threads each would spend
# the cores waiting on each other: measured, the suite took longer on two workers than on one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# The edit loop (``make test-fast``, ``-m "not slow"``) leaves out every test that needs one of
# these fixtures, as if it were marked ``slow``: training the session's base costs about 30 s
# (and its sensitivity curves 30 s more), and a fresh interpreter 5-10 s of imports.
# ``make test`` runs them all.
SLOW_FIXTURES = frozenset({"trained_base", "run_python", "autoprune_cli"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        items[:] = worksteal_layout(items, workers)


def worksteal_layout(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """``items`` reordered so that ``--dist worksteal`` keeps every worker busy to the end.

    pytest-xdist's worksteal hands each worker one contiguous share of the collection (the first
    worker the first len/workers items, and so on), and an idle worker takes the back half of
    the busiest one's queue. In file order the slow tests bunch up (a share can end on a
    minute-long test while the other worker has nothing left), and every share starts with a
    test that waits for the session's base while one worker trains it. Measured on the 2-core
    machine (a timeline of ``make test``), one core idled for the first 30 s and the last 75 s.

    So each share holds its slow tests first and its fast ones last (steals take fast tests
    from the back, and the last minute runs many small tests instead of one long one); a
    module's slow tests stay together (its module fixtures are built once) and go to the share
    with fewer slow tests so far; every share but the first starts with modules that need no
    trained base. The order is a pure function of the collection, the same in every worker, as
    xdist requires.
    """
    slow_by_module: dict[Path, list[pytest.Item]] = {}
    fast: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("slow"):
            slow_by_module.setdefault(item.path, []).append(item)
        else:
            fast.append(item)
    shares: list[list[list[pytest.Item]]] = [[] for _ in range(workers)]
    for block in slow_by_module.values():
        min(shares, key=lambda share: sum(map(len, share))).append(block)

    def needs_base(block: list[pytest.Item]) -> bool:
        return any("trained_base" in getattr(item, "fixturenames", ()) for item in block)

    for share in shares[1:]:
        share.sort(key=needs_base)  # stable: file order otherwise
    ordered: list[pytest.Item] = []
    left = len(items)
    for index, share in enumerate(shares):
        size = left // (workers - index)  # what xdist sends this share's worker first
        left -= size
        slow = [item for block in share for item in block]
        filler = max(size - len(slow), 0) if index < workers - 1 else len(fast)
        ordered += slow + fast[:filler]
        fast = fast[filler:]
    return ordered


@pytest.fixture(autouse=True)
def autoprune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "studies"
    monkeypatch.setenv("AUTOPRUNE_HOME", str(home))
    return home


def _made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """``name`` under the run's shared temporary folder, made by the first process that needs it.

    Each pytest-xdist worker has a session of its own, so a session fixture would run once per
    worker; a file lock in the folder the workers share lets the first make it and the others
    wait for it, as in a run without workers.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, above each worker's popen-gwK/
    target, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            make(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 base checkpoint trained on mnist5k (3 epochs; ~96-99% val accuracy)."""
    from autoprune.base import train_base

    def make(folder: Path) -> None:
        train_base("resnet20", "mnist5k", 3.0, folder / "resnet20-mnist5k.pt", log=lambda _: None)

    return _made_once(tmp_path_factory, "base", make) / "resnet20-mnist5k.pt"


@pytest.fixture(scope="session")
def sensitivity_curves_dir(trained_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default space's sensitivity curves of ``trained_base``, measured once per session.

    Measuring them (25 adaptive-BN proxies, about 40 s) is what the first default-space search
    of a base does; :func:`warm_sensitivity` puts this cache where every later search looks.
    """
    from autoprune import prepare, priors
    from autoprune.config import SearchConfig
    from autoprune.space import SearchSpace

    def make(folder: Path) -> None:
        config = SearchConfig(base_checkpoint=str(trained_base), dataset="mnist5k")
        objective = prepare.objective_config(config, SearchSpace.load(config.space))
        priors.sensitivity_curves(objective, cache_dir=folder)

    return _made_once(tmp_path_factory, "sensitivity", make)


@pytest.fixture
def warm_sensitivity(sensitivity_curves_dir: Path, autoprune_home: Path) -> Path:
    """This test's ``AUTOPRUNE_HOME`` holds the session's sensitivity curves of ``trained_base``,
    as after a first search of the default space: a default-space search measures none."""
    target = autoprune_home / "cache" / "sensitivity"
    shutil.copytree(sensitivity_curves_dir, target, dirs_exist_ok=True)
    return target


# --------------------------------------------------------------------------- shared helpers


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current directory: what a search writes under ./ (policies/) lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module: small convolutions run far faster so on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist5k_splits() -> Any:
    """The bundled mnist5k splits (seed 0), loaded once: reading them costs about a second."""
    from autoprune import data

    return data.create("mnist5k")


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run Python source in a fresh interpreter (``sys.executable``) and return the result.

    The child inherits the environment, so it sees this test's ``AUTOPRUNE_HOME``; it runs in
    ``tmp_path`` so nothing it writes lands in the clone. ``check=True`` (the default) fails
    the test with the child's stderr when it exits non-zero.
    """

    def run(
        source: str, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(source), *args],
            cwd=tmp_path,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"child process exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    return run


# --------------------------------------------------------------------------- CIFAR-10 on disk

CIFAR10_LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_PER_CLASS_PER_BATCH = 2  # 20 images per training batch, 100 training images in all


class _Py2Str(bytes):
    """A Python 2 ``str``: what the real CIFAR pickles hold for keys and names.

    Python 3 reads such a string as ``str`` with ``encoding="latin1"`` (torchvision) and as
    ``bytes`` with ``encoding="bytes"`` (the dataset's own instructions: ``dict[b'data']``).
    """


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Writes :class:`_Py2Str` with the protocol-2 string opcodes Python 2 used."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2str(self, obj: bytes) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _write_py2_pickle(path: Path, obj: Any) -> None:
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_cifar10(root: Path, per_class_per_batch: int = CIFAR10_PER_CLASS_PER_BATCH) -> Path:
    """Write a tiny dataset in CIFAR-10's on-disk format under ``root/cifar-10-batches-py``.

    Five ``data_batch_N`` files and a ``test_batch`` (dicts with ``data``: uint8 N x 3072 in
    R, G, B planes of 32 x 32, ``labels``, ``batch_label``, ``filenames``) and ``batches.meta``
    (``label_names``, ``num_cases_per_batch``, ``num_vis``). Pixels are random but seeded, so
    tests can read the files back to know what each image is.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    batches = {f"data_batch_{i}": f"training batch {i} of 5" for i in range(1, 6)}
    batches["test_batch"] = "testing batch 1 of 1"
    n = per_class_per_batch * len(CIFAR10_LABEL_NAMES)
    for batch_name, batch_label in batches.items():
        labels = [i % len(CIFAR10_LABEL_NAMES) for i in range(n)]
        batch = {
            _Py2Str(b"batch_label"): _Py2Str(batch_label.encode()),
            _Py2Str(b"labels"): labels,
            _Py2Str(b"data"): rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            _Py2Str(b"filenames"): [
                _Py2Str(f"{batch_name}_{i:05d}.png".encode()) for i in range(n)
            ],
        }
        _write_py2_pickle(folder / batch_name, batch)
    meta = {
        _Py2Str(b"num_cases_per_batch"): n,
        _Py2Str(b"label_names"): [_Py2Str(name.encode()) for name in CIFAR10_LABEL_NAMES],
        _Py2Str(b"num_vis"): 3072,
    }
    _write_py2_pickle(folder / "batches.meta", meta)
    return folder


@pytest.fixture
def cifar10_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding a tiny CIFAR-10 (100 training, 20 test images) in the real format.

    torchvision verifies the md5 of every CIFAR file against the published archive
    (``check_integrity`` in ``torchvision.datasets.cifar``, called by ``CIFAR10._check_integrity``
    and ``_load_meta``), which a synthetic file can never match. For the duration of the test
    that check is replaced by an existence check, so a missing file still reads as "not found"
    while the parsing code (pickle layout, reshape, labels, class names) runs unchanged.
    """
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    root = tmp_path / "cifar"
    write_cifar10(root)
    return root
