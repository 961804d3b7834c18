# Fresh machine: `make demo` (install + local demo) and `make test` (install + full test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean manifests-check

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

# Render every kustomization under manifests/ (kubectl kustomize) and validate it offline:
# Kubernetes schemas, upstream CRD schemas and CEL rules, cross-object references.
manifests-check: $(STAMP)
	$(BIN)/python -m tests.manifests.validate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
