# dyno: the two commands a new user needs are `make cluster` and `make test`;
# both run `make install` first when the virtualenv is missing or stale.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLUSTER_DIR ?= .cluster

.PHONY: install test cluster cluster-stop cluster-start cluster-restart bench bench-tls clean redis-server node-deps

install: $(STAMP) redis-server node-deps

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian's redis-server is the backend every node and every test runs against.
redis-server:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || \
	  scripts/install-debian-packages redis-server redis-tools

# ioredis (Node.js) for tests/test_ioredis.py, in .node/ (git ignores it). Best effort:
# without npm, or offline, one line says so and the test skips.
NODE_DIR := .node
node-deps: $(NODE_DIR)/.installed

$(NODE_DIR)/.installed:
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "npm not found: ioredis not installed (tests/test_ioredis.py will skip)"; \
	elif mkdir -p $(NODE_DIR) && npm install --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error ioredis@5 >/dev/null; then \
	  touch $@; \
	else echo "npm install ioredis@5 failed: tests/test_ioredis.py will skip"; fi

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

cluster: install
	$(BIN)/dyno cluster up --dir $(CLUSTER_DIR)

# make cluster-stop: the whole cluster (whoever started its processes);
# make cluster-stop NODE=node2: one node (its Redis keeps its data for cluster-start)
cluster-stop:
	@if [ ! -x $(BIN)/dyno ]; then echo "nothing to stop (no $(VENV))"; \
	elif [ -n "$(NODE)" ]; then $(BIN)/dyno cluster stop --dir $(CLUSTER_DIR) --node $(NODE); \
	else $(BIN)/dyno cluster down --dir $(CLUSTER_DIR); fi

# make cluster-start NODE=node2 / make cluster-restart NODE=node2: one node of `make cluster`
cluster-start: install
	@if [ -z "$(NODE)" ]; then echo "say which node: make cluster-start NODE=node1 (make cluster starts a cluster)"; exit 2; fi
	$(BIN)/dyno cluster start --dir $(CLUSTER_DIR) --node $(NODE)

cluster-restart: install
	@if [ -z "$(NODE)" ]; then echo "say which node: make cluster-restart NODE=node1"; exit 2; fi
	$(BIN)/dyno cluster restart --dir $(CLUSTER_DIR) --node $(NODE)

bench: install
	@command -v nutcracker >/dev/null 2>&1 || scripts/install-debian-packages nutcracker
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# Plaintext against TLS on the client port, one node and 3 racks, side by side
bench-tls: install
	$(BIN)/python scripts/bench.py --targets redis,dyno-1,dyno-3r-one --tls $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis $(NODE_DIR)
