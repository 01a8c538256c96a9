# Two commands on a fresh machine: `make demo` and `make test`. Both create the environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test env typecheck lint-deploy image test-image test-systemd bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

# The main job on the built-in simulated provider: attest, complete, block a tampered answer.
demo: $(STAMP)
	$(PY) -m sidecar.demo

test: $(STAMP)
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
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

# 5-minute soak with 200 concurrent clients, a tenth of them tampered (docs/reliability.md).
soak: $(STAMP)
	$(PY) bench/soak.py --clients 200 --duration 300 --tamper-share 0.1

clean:
	rm -rf $(VENV) build *.egg-info
