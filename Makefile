# Two commands on a fresh machine: `make demo` and `make test`. Both create the environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test env near-env typecheck lint-deploy image test-image test-systemd bench bench-quick bench-smoke soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

# NEAR's own SDK, the independent implementation the E2EE interop tests run against
# (tests/test_e2ee_interop.py). It needs Python 3.12+, so it gets a venv of its own; without such
# an interpreter this says so and those tests skip. NEAR_PYTHON=/path/to/python3.12 overrides.
NEAR_SDK := nearai-inference-sdk==0.2.0
NEAR_VENV := .venv-near
NEAR_PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.1[2-9]*/bin/python) $(shell command -v python3.14 python3.13 python3.12 2>/dev/null))

near-env:
	@if [ -z "$(NEAR_PYTHON)" ] || ! "$(NEAR_PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
		echo "near-env: no Python 3.12+ interpreter found (set NEAR_PYTHON=...): the NEAR SDK interop tests will be skipped"; \
	elif [ ! -f $(NEAR_VENV)/.installed-$(NEAR_SDK) ]; then \
		echo "near-env: creating $(NEAR_VENV) with $(NEAR_PYTHON) for $(NEAR_SDK)"; \
		"$(NEAR_PYTHON)" -m venv $(NEAR_VENV) && \
		$(NEAR_VENV)/bin/python -m pip install --quiet '$(NEAR_SDK)' && \
		touch '$(NEAR_VENV)/.installed-$(NEAR_SDK)'; \
	fi

# The main job on the built-in simulated provider: attest, complete, block a tampered answer.
demo: $(STAMP)
	$(PY) -m sidecar.demo

test: $(STAMP) near-env
	$(PY) -m pytest -q

typecheck: $(STAMP)
	$(PY) -m mypy

# hadolint, systemd-analyze security (exposure <= 2.0) and kubernetes-validate --strict.
lint-deploy: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lint]'
	bash scripts/lint-deploy.sh

# The container image (docs/deploy.md). Falls back to a Debian base built with debootstrap
# (scripts/build-base-image.sh) when python:3.11-slim-bookworm cannot be pulled.
image:
	bash scripts/build-image.sh

# The image built and run read-only against the simulator; the systemd unit under a live systemd.
# Both need a Docker engine (and root for debootstrap) and print "SKIPPED: why" without one.
test-image: $(STAMP)
	bash scripts/test-image.sh

test-systemd: $(STAMP)
	bash scripts/test-systemd.sh

# Side-by-side benchmark (under 10 minutes): results in docs/benchmarks.md and .svg.
# `make bench ARGS=--quick` passes options on (see `bench/run.py --help`).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py $(ARGS)

# About two minutes, shorter windows (noisier): prints the target table, leaves docs/ alone.
bench-quick: $(STAMP)
	$(PY) bench/run.py --quick --no-docs $(ARGS)

# CI-sized (under a minute, not a timed test): prints the CPU ratios; never fails on them.
bench-smoke: $(STAMP)
	$(PY) bench/run.py --smoke --no-litellm $(ARGS)

# 5-minute soak with 200 concurrent clients, a tenth of them tampered (docs/reliability.md).
soak: $(STAMP)
	$(PY) bench/soak.py --clients 200 --duration 300 --tamper-share 0.1

clean:
	rm -rf $(VENV) $(NEAR_VENV) build *.egg-info

# Mutation testing with mutmut (docs/mutation.md): the verification core and the delivery path.
# `make mutate` is the full run the doc records (about half an hour on two cores);
# `make mutate CI=1` (in .ci/run) mutates binding.py and sse.py against their unit tests only,
# in a working copy with that selection (scripts/mutate_subset.py); MUTANTS='sidecar.verify.nvidia*'
# any other set with the full selection. Either fails on a surviving mutant that
# docs/mutation.md does not explain.
MUTATE_CI := 'sidecar.verify.binding*' 'sidecar.verify.sse*'
MUTATE_CI_TESTS := tests/test_binding.py tests/test_sse.py
MUTATE_FULL := 'sidecar.verify.*' 'sidecar.proxy.verdict*' \
	'sidecar.proxy.app.x__stream_shape_failure*' 'sidecar.proxy.app.x__read_upstream*' \
	'sidecar.proxy.app.x__relay_stream*' 'sidecar.proxy.app.x__buffer_stream*' \
	'sidecar.proxy.app.x__plain*' 'sidecar.proxy.app.x__deliver_or_block*'
MUTANTS ?= $(MUTATE_FULL)

.PHONY: mutate
ifdef CI
mutate: $(STAMP)
	$(PY) scripts/mutate_subset.py --tests $(MUTATE_CI_TESTS) -- $(MUTATE_CI)
else
mutate: $(STAMP)
	rm -rf mutants
	# A mutant that loops while allocating stops at 4 GiB of address space (MemoryError,
	# counted as killed) instead of taking the machine's memory before mutmut's timeout.
	ulimit -v 4194304 && $(PY) -m mutmut run --max-children 2 $(MUTANTS)
	$(PY) -m tests.mutation_gate $(MUTANTS)
endif
