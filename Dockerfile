# syntax=docker/dockerfile:1
# One image for every epp role: `epp serve` (endpoint picker), `epp sim` (model-server
# simulator) and `epp bbr` (body-based router). Kubernetes selects the role via `args`.
#
# Built for a restricted pod: numeric non-root UID (so runAsNonRoot can be verified without
# a passwd lookup), nothing written outside /tmp (readOnlyRootFilesystem), no HEALTHCHECK
# (Kubernetes probes the gRPC health service on port 9003 instead).
#
# Build: `make image IMAGE=registry.example.com/team/epp [TAG=...]` (docs/deploy.md, step 6).
# Reproducible: every dependency is installed at the version pinned in constraints.txt. Slim: no
# extras, so no plotting stack (`epp replay --out` plots need `pip install 'epp[replay]'`).

ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# --- build: turn the project and all its dependencies into wheels -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY epp ./epp
RUN python -m pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels .

# --- runtime: install only the wheels; no compilers, no source tree -----------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="epp" \
      org.opencontainers.image.description="Python endpoint picker for LLM inference (Gateway API Inference Extension drop-in)" \
      org.opencontainers.image.licenses="Apache-2.0"
# pip compiles bytecode at install time, so the interpreter never needs to write .pyc files;
# HOME points the few libraries that want a cache directory at /tmp: numba keeps the default
# scorer's compiled kernels there (the package directory is read-only), so a pod's first start
# compiles them (~2 s before ready) and container restarts reuse the /tmp emptyDir's copy.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels/epp-*.whl
WORKDIR /tmp
USER 65532:65532
# 9002 ext_proc gRPC (TLS), 9003 gRPC health, 9090 Prometheus metrics, 8000 `epp sim`,
# 9004 `epp bbr` ext_proc gRPC, 9005 `epp bbr` gRPC health.
EXPOSE 9002 9003 9090
ENTRYPOINT ["epp"]
CMD ["serve"]
