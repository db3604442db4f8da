"""A search on a Ray cluster whose worker node shares no filesystem with the driver.

Two Ray nodes on this machine (``ray.cluster_utils.Cluster``: each its own raylet process
group): the head, which the driver joins, and a worker node with the custom resource
``worker_node``, which ``--resources-per-trial`` makes the only place trials can run. The
worker node starts in its own folder with its own ``AUTOPRUNE_HOME``, and its worker processes
install an audit hook that refuses, with ``PermissionError``, every file operation under the
driver's folder (where the driver's base checkpoint, study database and ``studies/`` live):
a node with no shared filesystem, enforced even for root, and every refusal is logged so the
test sees one that Ray or autoprune swallowed. The search must still complete, every trial
must record the worker node as where it ran, and the worker node must have kept its score
cache on its own disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune import evaluate as evaluate_module
from autoprune import shipping
from autoprune.base import load_base
from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.evaluate import ObjectiveConfig, prune_policy
from autoprune.groups import discover_groups
from autoprune.policy import GroupPolicy, Policy, Retrain

FORBIDDEN_ENV = "AUTOPRUNE_TEST_FORBIDDEN_ROOT"  # set only on the worker node
AUDIT_LOG_ENV = "AUTOPRUNE_TEST_AUDIT_LOG"  # folder the worker node's processes log into
# Audit events whose first arguments are paths: opening, listing, creating, moving, removing.
_PATH_EVENTS = frozenset(
    {
        "open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.remove", "os.rmdir",
        "os.chdir", "os.truncate", "os.utime", "os.chmod", "shutil.copyfile", "shutil.rmtree",
        "sqlite3.connect",
    }
)  # fmt: skip


def worker_setup() -> None:
    """Ray's worker_process_setup_hook: on the worker node only, fence off the driver's folder."""
    forbidden = os.environ.get(FORBIDDEN_ENV)
    if not forbidden:
        return  # a process on the driver's node
    log = os.path.join(os.environ[AUDIT_LOG_ENV], f"worker-{os.getpid()}.log")
    fd = os.open(log, os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"installed\n")

    def refuse_driver_paths(event: str, args: tuple[Any, ...]) -> None:
        if event not in _PATH_EVENTS:
            return
        for arg in args[:2]:
            if isinstance(arg, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(arg))
                if path == forbidden or path.startswith(forbidden + os.sep):
                    caller = sys._getframe(1)
                    where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
                    os.write(fd, f"denied {event} {path} ({where})\n".encode())
                    raise PermissionError(13, "the driver's files are not on this node", path)

    sys.addaudithook(refuse_driver_paths)


@pytest.fixture
def two_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A head node (the driver's) and a worker node fenced off from ``tmp_path/driver``."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # Ray's sockets live under its temp dir, whose path must stay short; a private one also
    # keeps this cluster's address file away from other Ray sessions on the machine.
    ray_tmp = Path(tempfile.mkdtemp(prefix="apmn", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    driver, worker = tmp_path / "driver", tmp_path / "worker"
    audit = worker / "audit"
    for folder in (driver, audit):
        folder.mkdir(parents=True)
    monkeypatch.setenv("AUTOPRUNE_HOME", str(driver / "studies"))
    small: dict[str, Any] = {"object_store_memory": 80 * 1024**2, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **small})
    try:
        with monkeypatch.context() as node_env:  # what the worker node's processes inherit
            node_env.chdir(worker)
            node_env.setenv("AUTOPRUNE_HOME", str(worker / "studies"))
            node_env.setenv(FORBIDDEN_ENV, str(driver))
            node_env.setenv(AUDIT_LOG_ENV, str(audit))
            node = cluster.add_node(num_cpus=1, resources={"worker_node": 1}, **small)
        # Joined before moving into the driver's folder: Ray puts the driver's sys.path (its
        # working directory included) on every worker's, and imports would list that folder.
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env={
                "env_vars": {"PYTHONPATH": str(Path(__file__).parent)},
                "worker_process_setup_hook": f"{Path(__file__).stem}.worker_setup",
            },
        )
        monkeypatch.chdir(driver)
        yield {"driver": driver, "worker": worker, "audit": audit, "node_id": node.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_runs_on_a_node_that_cannot_read_the_drivers_files(
    trained_base: Path, two_nodes: dict[str, Any]
) -> None:
    import ray

    driver, audit = two_nodes["driver"], two_nodes["audit"]
    base = driver / "base.pt"
    shutil.copy(trained_base, base)

    @ray.remote(num_cpus=0, resources={"worker_node": 0.01})
    def read_on_worker_node(path: str) -> str:
        try:
            Path(path).read_bytes()
        except PermissionError:
            return "refused"
        return "read"

    # The fence holds before anything runs: the worker node cannot read the driver's base.
    assert ray.get(read_on_worker_node.remote(str(base))) == "refused"

    db = driver / "s.db"
    args = [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--space", FAST_SPACE, "--trials", "2", "--executor", "ray", "--storage", f"sqlite:///{db}",
        "--study", "t", "--quiet", "--cpus-per-trial", "1", "--max-concurrent", "1",
        "--screen", "1", "--baselines", "none", "--resources-per-trial", '{"worker_node": 1}',
    ]  # fmt: skip
    assert main(args) == 0

    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{db}").get_trials()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 2, [(t.state, t.user_attrs.get("error")) for t in trials]
    assert {t.user_attrs["node_id"] for t in trials} == {two_nodes["node_id"]}
    assert all(t.user_attrs["node_ip"] for t in trials)

    logs = {p.name: p.read_text() for p in audit.glob("worker-*.log")}
    assert logs, "no worker process started on the worker node"
    denied = [line for text in logs.values() for line in text.splitlines() if line != "installed"]
    # One refusal is the probe above; anything else is a worker reaching for the driver's files.
    assert [line.split(" (")[0] for line in denied] == [f"denied open {base}"], denied
    # The worker node scored on its own disk, from the scores the driver sent (taylor is in
    # the space, so the driver computed them before the search).
    assert list((two_nodes["worker"] / "studies" / "cache" / "scores").glob("*.pt"))


# --------------------------------------------------------------------------- no Ray


def _energy_policy(base: Path) -> Policy:
    spec = load_base(base).spec
    names = [g.name for g in discover_groups(spec.build(), spec.example_inputs())]
    return Policy(
        model=spec,
        groups={n: GroupPolicy(rate=0.3, criterion="energy") for n in names},
        target_macs_ratio=0.6,
        retrain=Retrain(epochs=0.0),
    )


@pytest.fixture
def fresh_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a new worker: nothing installed from an earlier shipment."""
    monkeypatch.setattr(shipping, "_unpacked", set())
    monkeypatch.setattr(evaluate_module, "_installed_bases", {})


def test_a_shipped_base_prunes_without_the_drivers_files_or_calibration(
    trained_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_worker_process: None,
) -> None:
    base = tmp_path / "driver" / "base.pt"
    base.parent.mkdir()
    shutil.copy(trained_base, base)
    config = ObjectiveConfig(
        base_checkpoint=str(base),
        dataset="mnist5k",
        device="cpu",
        calibration_images=64,
        score_cache=str(tmp_path / "driver" / "scores"),
    )
    shipment = shipping.pack(config, ["l1", "energy", "auto"], seed=0)
    assert shipment.bytes_sha256 == hashlib.sha256(base.read_bytes()).hexdigest()

    base.rename(tmp_path / "elsewhere.pt")  # the worker's node has no such file
    monkeypatch.setenv("AUTOPRUNE_HOME", str(tmp_path / "node"))
    worker_config = shipping.unpack(shipment, config, on_driver_node=False)
    assert worker_config.cache_dir() == tmp_path / "node" / "cache" / "scores"
    pruned = prune_policy(worker_config, _energy_policy(trained_base))
    assert pruned.counters.get("calibration_passes", 0) == 0  # the driver's scores were used
    assert pruned.policy.base is not None
    assert pruned.policy.base.checkpoint == str(base)  # recorded as the driver named it
    assert pruned.policy.base.sha256 == shipment.base_sha256


def test_a_damaged_shipment_is_refused_in_one_line(
    trained_base: Path, tmp_path: Path, fresh_worker_process: None
) -> None:
    config = ObjectiveConfig(base_checkpoint=str(trained_base), dataset="mnist5k", device="cpu")
    shipment = shipping.pack(config, ["l1"], seed=0)
    flipped = bytearray(shipment.base_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    damaged = dataclasses.replace(shipment, base_bytes=bytes(flipped))
    with pytest.raises(UserError, match="damaged in transfer"):
        shipping.unpack(damaged, config, on_driver_node=False)
    # Bytes that match their hash but are no checkpoint get read_torch_file's own message.
    junk = b"not a checkpoint"
    foreign = dataclasses.replace(
        shipment, base_bytes=junk, bytes_sha256=hashlib.sha256(junk).hexdigest()
    )
    with pytest.raises(UserError, match=r"sent by the driver is not a torch checkpoint"):
        shipping.unpack(foreign, config, on_driver_node=False)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("worker_node", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"CPU": 2}', "--cpus-per-trial sets it"),
        ('{"worker_node": -1}', "amounts are numbers >= 0"),
    ],
)
def test_bad_resources_per_trial_exit_2_with_the_fix(
    text: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "--resources-per-trial", text, "--executor", "local"]) == 2
    assert problem in capsys.readouterr().err
