#!/usr/bin/env bash
# The packages a GPU machine without a package index lacks, as one archive that travels with a run.
#
#   benchmarks/gpu_bundle.sh [OUT.tar.xz] [PYTHON_VERSION]      # default .gpu/site.tar.xz, 3.12
#
# On the target: tar -xJf site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#
# Which packages: what autoprune needs that the H200 image lacks (it has torch, torchvision,
# numpy, scipy, scikit-learn, pandas, matplotlib, pyyaml, rich, requests, click, protobuf,
# msgpack, filelock, attrs, Pillow, pytest, ...), at the versions constraints.txt pins. Ray Tune
# imports pydantic (ray.train.v2), which the image lacks.
# Ray's wheel is 79 MB, more than a run may carry (64 MiB with the tree), so three parts no
# local Tune run uses are left out: ray/jars (Java workers for cross-language calls),
# ray/dashboard/client/build (the dashboard's web page; autoprune starts Ray with
# include_dashboard=False) and ray/rllib (reinforcement learning; nothing in ray.tune, ray.train
# or ray._private imports it). RECORD is rewritten to match. Everything is installed with
# --no-deps into one folder and xz-compressed: about 34 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/site.tar.xz}
py=${2:-3.12}
tag=cp${py/./}
packages=(optuna ray torch-pruning zennit SQLAlchemy alembic Mako colorlog mlxtend plotly
          jsonschema jsonschema-specifications referencing rpds-py tensorboardX
          pydantic pydantic_core annotated-types typing-inspection typing_extensions)
pins=()
for name in "${packages[@]}"; do
    pin=$(grep -i -E "^${name}==" constraints.txt || true)
    [[ -n $pin ]] || { echo "gpu_bundle: $name is not pinned in constraints.txt" >&2; exit 2; }
    pins+=("$pin")
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" \
    --implementation cp "${platforms[@]}" -d "$work/wheels" "${pins[@]}"

# Ray without its Java jars, dashboard web page and RLlib; RECORD lists what is left.
ray_wheel=$(ls "$work"/wheels/ray-*.whl)
mkdir "$work/ray"
(cd "$work/ray" && unzip -q "$ray_wheel" && rm -rf ray/jars ray/dashboard/client/build ray/rllib)
python3 - "$work/ray" <<'EOF'
import csv, pathlib, sys
root = pathlib.Path(sys.argv[1])
record = next(root.glob("ray-*.dist-info/RECORD"))
rows = [r for r in csv.reader(record.open()) if r and (root / r[0]).exists()]
with record.open("w", newline="") as f:
    csv.writer(f).writerows(rows)
EOF
rm "$ray_wheel"
(cd "$work/ray" && zip -q -r "$ray_wheel" .)

python3 -m pip install --quiet --no-deps --no-compile --target "$work/site" \
    --python-version "$py" --implementation cp --only-binary=:all: "${platforms[@]}" \
    "$work"/wheels/*.whl
mkdir -p "$(dirname "$out")"
tar -C "$work/site" -cf - . | xz -T0 -9 > "$out"
echo "$out: $(du -h "$out" | cut -f1) for Python $py ($tag): ${pins[*]}"
