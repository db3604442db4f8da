# Two commands on a fresh machine (see README):
#   make demo   set up, then run the main job on the embedded default (ResNet-20 on MNIST-5k)
#   make test   set up, then lint, type-check and run the whole test suite side by side (what CI runs)
#   make test-fast  the tests not marked slow, for the edit loop; make docs  docs/cli.md
#
# The virtualenv lives outside the clone, keyed by a hash of the dependency lists and pins, so
# repeated runs and fresh clones reuse it instead of reinstalling ~5 GB of torch.

SHELL := /bin/bash
PYTHON ?= python3
DEPS_HASH := $(shell $(PYTHON) .ci/deps_hash.py)
VENV ?= $(HOME)/.cache/autoprune/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
export TUNE_DISABLE_AUTO_CALLBACK_LOGGERS := 1
export RAY_DEDUP_LOGS := 0

.PHONY: setup demo test test-fast lint typecheck pytest docs benchmark clean

# No file prerequisites: the path itself changes when the dependencies do, and a fresh
# clone's newer timestamps must not trigger a reinstall.
$(VENV)/.installed:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,postgres,onnx,timm,dashboard,nni,peers]"
	touch $@

# The editable install is refreshed every time: a cached venv may point at another clone.
setup: $(VENV)/.installed
	@$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . >/dev/null

demo: setup
	$(BIN)/autoprune search --budget-flops 0.5

lint: setup
	$(BIN)/ruff check autoprune tests benchmarks
	$(BIN)/ruff format --check autoprune tests benchmarks

# mypy's incremental cache lives beside the virtualenv, not in the clone: a cold check costs
# ~25 s of one core (most of it reading torch's types), a warm one under a second. mypy checks
# each cached module against its source's hash and its own options, so a fresh clone's changed
# files, and only they, are checked again; a new venv (new pins) starts a new cache.
typecheck: setup
	$(BIN)/mypy --cache-dir $(VENV)/mypy-cache

# Two pytest-xdist workers, one per core of the 2-core machines CI runs on (tests/conftest.py
# keeps torch on one thread in each); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

pytest: setup
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

# Lint and type-check run beside the tests, not before them: on a fresh clone they take ~25 s
# of one core, and the tests leave the cores idle part of the time (waiting on Ray, servers and
# child processes). Their few lines may land among pytest's progress dots (make's output sync
# would hold pytest's until it ends); any failure fails `make test` once the others have ended.
test:  # the sub-make sets up once, for all three
	@$(MAKE) --no-print-directory -j3 lint typecheck pytest

# The edit loop, under 2 minutes: the tests not marked slow (real searches, Ray, PostgreSQL,
# installs, training, fresh interpreters, models larger than ResNet-20; tests/conftest.py).
test-fast: setup
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

# docs/cli.md is generated from the parser; tests/test_docs.py fails when it is stale.
docs: setup
	$(BIN)/python -m autoprune.cli.docs > docs/cli.md

# autoprune's searched winner against hand-written policies, Torch-Pruning and ModelOpt FastNAS on
# Fashion-MNIST (docs/benchmarks.md). PROFILE=cpu: about an hour on 2 cores (plus ~15 minutes to
# train the ResNet-20 base once); PROFILE=gpu: ResNet-56 and MobileNetV2 on one GPU. RUNGS=2: the
# searches climb a ladder, and the winner each had without it is a row of its own.
PROFILE ?= cpu
RUNGS ?= 2
FASHION_MNIST := /usr/share/datasets/fashion-mnist
benchmark: setup
	@test -d $(FASHION_MNIST) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "could not install Debian's dataset-fashion-mnist here: install it, or the search will say what is missing"
	$(BIN)/python benchmarks/peers_vs_search.py --profile $(PROFILE) --rungs $(RUNGS)

clean:
	rm -rf studies/base studies/cache studies/*.db policies/_scratch
