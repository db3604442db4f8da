"""autoprune as a user gets it from ``pip install``: no clone, no source tree beside it.

The bundled search spaces are package data (``autoprune/search_spaces/``), and a search writes
its front where ``--policies-dir`` says. The slow test builds the wheel from a copy of the
package, installs it into a throwaway folder, and runs ``autoprune spaces`` and a tiny search
from an empty directory, with the checkout nowhere on ``sys.path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoprune.cli import main
from autoprune.space import spaces_dir

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI of the autoprune found first on sys.path, after checking it is the installed one.
CHILD = """
import sys
from pathlib import Path

target = Path(sys.argv[1]).resolve()
import autoprune

assert Path(autoprune.__file__).resolve().is_relative_to(target), autoprune.__file__
from autoprune.cli import main

sys.exit(main(sys.argv[2:]))
"""


def test_spaces_lists_every_bundled_space_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    files = sorted(spaces_dir().glob("*.yaml"))
    assert {p.stem for p in files} >= {"default", "fashion-mnist"}
    for path in files:
        description = yaml.safe_load(path.read_text())["description"]
        assert path.stem in out and description.split()[0] in out
    assert "search_spaces" in out  # where they live


def test_policies_dir_that_is_a_file_is_refused_before_the_search_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_folder = tmp_path / "policies"
    not_a_folder.write_text("")
    db = tmp_path / "s.db"
    args = ["search", "--policies-dir", str(not_a_folder), "--storage", f"sqlite:///{db}"]
    assert main(args) == 2
    assert "--policies-dir" in capsys.readouterr().err
    assert not db.exists()


def _install_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the package (no stale build state of the checkout) and
    install it, without dependencies (the test's environment has them), into a fresh folder."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "autoprune", source / "autoprune", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist, target = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("autoprune-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


@pytest.mark.slow
def test_installed_wheel_lists_spaces_and_searches_outside_a_clone(
    trained_base: Path, sensitivity_curves_dir: Path, tmp_path: Path
) -> None:
    target = _install_wheel(tmp_path)
    workdir = tmp_path / "empty"
    workdir.mkdir()
    home = tmp_path / "home"
    # The base's sensitivity curves as an earlier search left them (the fashion-mnist space
    # prunes with the default's max_rate, so the key is the same): this search measures none.
    shutil.copytree(sensitivity_curves_dir, home / "cache" / "sensitivity")
    env = {**os.environ, "PYTHONPATH": str(target), "AUTOPRUNE_HOME": str(home)}

    def autoprune(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(target), *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc.stdout

    listed = autoprune("spaces")
    assert "default" in listed and "fashion-mnist" in listed
    assert str(target) in listed.replace("\n", "")  # the bundled folder is the installed one

    policies = tmp_path / "fronts"
    out = autoprune(
        "search", "--executor", "local", "--trials", "2", "--screen", "1", "--baselines", "none",
        "--base-checkpoint", str(trained_base), "--budget-flops", "0.6", "--dataset", "mnist5k",
        "--space", "fashion-mnist", "--study", "installed", "--policies-dir", str(policies),
        "--quiet",
    )  # fmt: skip
    assert list((policies / "installed").glob("trial-*.yaml")), out
    assert "sensitivity: pruning" not in out, "the cached curves were read"
    assert (policies / "installed" / "front.yaml").is_file()
    assert f"exported the front to {policies / 'installed'}/" in out.replace("\n", "")
    assert list(workdir.iterdir()) == [], "nothing is written to the current directory unasked"
