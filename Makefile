# The two commands in the README are the contract: `make up` and `make test`.
# Both create the virtual environment on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Two installs: what running a cluster needs (`make up`), and that plus the tools the
# tests and benchmarks use (`make test` and the rest).
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed-dev
PIP       := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: venv test up check lint typecheck soak bench bench-deps jepsen jepsen-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[dev,bench]'
	touch $(STAMP) $(RUN_STAMP)

venv: $(STAMP)

# Two workers: most tests are one Python process at 100% of a core, and CI has two cores.
# Whole files go to a worker (--dist loadfile): a file's tests run in order, one at a
# time, as some share a module's cluster or build on what earlier ones did.
TEST_WORKERS ?= 2
test: $(STAMP) jepsen-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# A local cluster in the foreground until Ctrl-C: a controller of 3 and 3 groups of 3,
# data in ./.shardwise (running it again reuses the data). Flags go through UP, e.g.
# `make up UP="--spare-groups 1"`; `shardwise up --help` lists them.
up: $(RUN_STAMP)
	$(VENV)/bin/shardwise up $(UP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

soak: $(STAMP) jepsen-deps
	SHARDWISE_SOAK=1 $(PY) -m pytest -q -m soak --timeout=7200
	$(MAKE) jepsen

# nftables cuts links between the fault harness's servers (tests/faults, `make jepsen`).
# Installed when missing and we are root; without it the partition faults are skipped
# (and say so), the other faults still run.
jepsen-deps:
	@command -v nft >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null; } \
		|| echo "nftables not installed (needs root and apt-get): partitions will be skipped"

# Long runs of the fault harness on real processes: JEPSEN="--seed 1 --seed 2 --duration 600".
# Prints a table per run; exits non-zero on any anomaly or lost write.
JEPSEN ?= --seed 1 --seed 2 --duration 300
jepsen: $(STAMP) jepsen-deps
	$(PY) -m shardwise.testing.faults $(JEPSEN)

bench: $(STAMP)
	$(PY) bench/placement.py
	$(PY) bench/raft_core.py
	$(PY) bench/raft_log.py
	$(PY) bench/raft_group.py
	$(PY) bench/kv.py
	$(PY) bench/sql.py

# The peers the benchmarks compare against (Debian packages; needs root).
bench-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server redis-server

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
