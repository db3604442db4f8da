"""Print the key of the cached virtualenv: a hash of what gets installed, nothing else.

Only the dependency lists of pyproject.toml and the pins in constraints.txt count, so editing
tool settings (ruff, pytest markers, ...) does not cost a 5 GB reinstall.
"""

import hashlib
import json
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: hash the whole file instead
    tomllib = None

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
pyproject = (root / "pyproject.toml").read_bytes()
if tomllib is not None:
    project = tomllib.loads(pyproject.decode())["project"]
    keys = ("requires-python", "dependencies", "optional-dependencies")
    pyproject = json.dumps({k: project.get(k) for k in keys}, sort_keys=True).encode()
digest = hashlib.sha256(pyproject + (root / "constraints.txt").read_bytes())
print(digest.hexdigest()[:16])
