# `make run` and `make test` work on a fresh machine: both create the virtualenv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: setup run test lint unit e2e protos envoy-config bench bench-full docs lmcache-venv test-lmcache autogen-venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,examples]'
	touch $(STAMP)

setup: $(STAMP)

## Start Envoy (:8001, admin :9901), ext_proc, A2A and 3 simulated vLLM instances, run the demo, serve until Ctrl-C.
## Flags: make run ARGS="--instances 5 --time-scale 0.1"
run: setup
	$(PY) -m benchmarks.stack $(ARGS)

## Lint (ruff, mypy), then every test (unit + end-to-end through a real Envoy): two worker processes (one test file each at a
## time), then the fault-injection suite on its own, since it measures load held while faults are injected.
## `make test ARGS="tests/unit"` runs only what ARGS names, in one process.
test: setup autogen-venv
	$(PY) -m ruff check .
	$(PY) -m mypy
ifeq ($(strip $(ARGS)),)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not resilience"
	$(PY) -m pytest -q -m resilience
else
	$(PY) -m pytest -q $(ARGS)
endif

## ruff, and mypy (strict on extproc/, a2a_service/ and workflow_router/; the files are listed in pyproject.toml).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

unit: setup
	$(PY) -m pytest -q tests/unit

## Regenerate the gRPC stubs of protos/ (committed; a test fails when they are stale).
protos: setup
	$(PY) -m a2a_service._protogen

## Regenerate the Envoy example configs (standalone, secured, GIE) and the Kubernetes gateway ConfigMap.
envoy-config: setup
	$(PY) -m extproc.envoy_config > envoy/envoy.yaml
	$(PY) -m extproc.envoy_config --jwt-issuer https://issuer.example.com --jwt-audience workflow-router \
		--jwt-jwks-file envoy/example-jwks.json --llm-rate-limit 100 --a2a-rate-limit 200 > envoy/envoy-secure.yaml
	$(PY) -m extproc.envoy_config --gie > envoy/envoy-gie.yaml
	$(PY) -m tests.manifests_support

## Regenerate docs/cli.md from the command-line parsers (a test fails when it is stale).
docs: setup
	$(PY) -m workflow_router.cli docs > docs/cli.md

## Quick versions of every benchmark (a few minutes); figures are printed, nothing is asserted.
bench: setup
	$(PY) -m benchmarks.gateway_overhead --quick
	$(PY) -m benchmarks.workflow_benchmark --quick --local-stack --time-scale 0.1
	$(PY) -m benchmarks.a2a_benchmark --quick
	$(PY) -m benchmarks.compare_routers --quick --shape both

## The full runs whose figures the README quotes.
bench-full: setup
	mkdir -p benchmarks/results
	$(PY) -m benchmarks.gateway_overhead --json-out benchmarks/results/gateway_overhead.json
	$(PY) -m benchmarks.workflow_benchmark --local-stack --json-out benchmarks/results/workflow_benchmark.json
	$(PY) -m benchmarks.a2a_benchmark
	$(PY) -m benchmarks.compare_routers --shape both --json-out benchmarks/results/compare_routers.json \
		--plot benchmarks/results/compare_routers.png

## LMCache (optional): its own virtualenv, because lmcache pins protobuf<7 and pulls torch (about 75 s, 1.9 GB).
LMCACHE_VENV ?= .lmcache-venv
lmcache-venv:
	test -x $(LMCACHE_VENV)/bin/python || $(PYTHON) -m venv $(LMCACHE_VENV)
	$(LMCACHE_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(LMCACHE_VENV)/bin/pip install --quiet --disable-pip-version-check lmcache==0.5.6

## The LMCache tests against a real controller (make test skips them when the LMCache venv is absent).
test-lmcache: setup lmcache-venv
	LMCACHE_PYTHON=$(abspath $(LMCACHE_VENV))/bin/python $(PY) -m pytest -q tests/lmcache tests/unit/test_lmcache_client.py

## AutoGen (for examples/autogen_agents.py): its own small virtualenv (~115 MB, under a minute), because
## autogen-core pins protobuf~=5.29 and our gRPC stubs need protobuf>=7.35. The example talks HTTP only.
AUTOGEN_VENV ?= .autogen-venv
AUTOGEN_STAMP := $(AUTOGEN_VENV)/.installed-stamp
$(AUTOGEN_STAMP):
	test -x $(AUTOGEN_VENV)/bin/python || $(PYTHON) -m venv $(AUTOGEN_VENV)
	$(AUTOGEN_VENV)/bin/pip install --quiet --disable-pip-version-check "autogen-agentchat==0.7.5" \
		"autogen-ext[openai]==0.7.5" httpx orjson
	touch $(AUTOGEN_STAMP)

autogen-venv: $(AUTOGEN_STAMP)

clean:
	rm -rf $(VENV) $(LMCACHE_VENV) $(AUTOGEN_VENV) .stack .pytest_cache .ruff_cache *.egg-info
