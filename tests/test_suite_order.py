"""The order ``make test`` hands pytest-xdist's worksteal scheduler (conftest.worksteal_layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import worksteal_layout


@dataclass
class Item:
    """What the layout reads of a collected test: its module, marks and fixtures."""

    path: Path
    name: str
    slow: bool = False
    fixturenames: tuple[str, ...] = ()

    def get_closest_marker(self, name: str) -> Any:
        return name if name == "slow" and self.slow else None


def _collection() -> list[Item]:
    items = []
    for module, slow, fixtures in [
        ("a", 3, ("trained_base",)),
        ("b", 2, ("trained_base",)),
        ("c", 2, ()),  # slow without the base: a fresh interpreter, say
        ("d", 0, ()),
        ("e", 1, ("trained_base",)),
    ]:
        path = Path(f"tests/test_{module}.py")
        items += [Item(path, f"slow{i}", True, fixtures) for i in range(slow)]
        items += [Item(path, f"fast{i}") for i in range(6)]
    return items


def test_each_share_runs_its_slow_modules_first_and_its_fast_tests_last() -> None:
    items = _collection()
    ordered = worksteal_layout(items, 2)  # type: ignore[arg-type]
    assert sorted(map(id, ordered)) == sorted(map(id, items)), "the same tests, reordered"
    half = len(items) // 2  # what xdist sends the first worker
    first, second = ordered[:half], ordered[half:]
    for share in (first, second):
        flags = [item.slow for item in share]
        assert flags == sorted(flags, reverse=True), "slow first, then fast"
        slow_modules = [item.path for item in share if item.slow]
        assert slow_modules == sorted(slow_modules, key=slow_modules.index), "modules unsplit"
    # the second worker starts on a module that does not wait for the session's base
    assert second[0].slow and "trained_base" not in second[0].fixturenames
    # slow tests are dealt to the share with fewer so far, a module at a time
    assert abs(sum(i.slow for i in first) - sum(i.slow for i in second)) <= 3
