# The project's commands. `make test` is the one CI runs (.ci/run calls it).
#   make test     lint, then every test (needs a running Docker engine)
#   make lint     shellcheck, hadolint and ruff only
#   make image    build the image locally as $(IMAGE) (BuildKit)
#   make lock     regenerate build_image/requirements.lock from requirements.txt
#   make bench-image  measure image builds (bench/image_build.py) into README.md
#   make images   render the README's pictures from their sources (Graphviz)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
DOCKER ?= $(shell [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker)
IMAGE  ?= gpu_transformers:dev
BASE_IMAGE ?=
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
PYTEST_ARGS ?=
comma := ,
# The lock is resolved for the image's Python (3.10, Ubuntu 22.04) on x86-64 Linux.
LOCK_FLAGS := --python-version 3.10 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header -q

SHELL_SCRIPTS := $(shell git ls-files -co --exclude-standard -- '*.sh' 'build_image/bin/*' '.ci/run')

.PHONY: help test lint image lock bench-image images clean-images
help:
	@sed -n '2,8s/^# //p' Makefile

$(VENV)/.ok: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

lint: $(VENV)/.ok
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/hadolint build_image/Dockerfile
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.ok
	tests/make-test-base.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS) tests

image:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f build_image/Dockerfile -t $(IMAGE) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE)) .

lock: $(VENV)/.ok
	$(VENV)/bin/uv pip compile build_image/requirements.txt $(LOCK_FLAGS) -o build_image/requirements.lock
	$(VENV)/bin/uv pip compile build_image/tools.in $(LOCK_FLAGS) -o build_image/tools.lock

bench-image: $(VENV)/.ok
	tests/make-test-base.sh
	$(PY) bench/image_build.py

clean-images:
	$(DOCKER) image prune --force --filter label=org.opencontainers.image.title=gpu_transformers

images: images/flow.svg images/flow.png
images/flow.svg: images/flow.dot
	dot -Tsvg $< -o $@
images/flow.png: images/flow.dot
	dot -Tpng -Gdpi=110 $< -o $@
