# The project's commands. `make test` is the one CI runs (.ci/run calls it).
#   make test     lint, then every test (needs a running Docker engine)
#   make lint     shellcheck, hadolint and ruff: exactly tests/test_lint.py
#   make image    build the image locally as $(IMAGE) (build_and_push.sh --no-push)
#   make lock     regenerate build_image/requirements.lock from requirements.txt
#   make bench-image  measure image builds (bench/image_build.py) into docs/bench-image.md
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
# `make test` runs the test files on this many pytest-xdist workers, a file on one worker
# (module fixtures made once). Much of the suite waits on the engine, sleeps and loopback
# servers, so two workers use a 2-core machine better than one (docs/development.md, CI).
TEST_WORKERS ?= 2
# Where `make lock` writes (tests/test_build_and_push.py relocks into a temporary folder).
LOCK_DIR ?= build_image
# The lock is resolved for the image's Python (3.10, Ubuntu 22.04) on x86-64 Linux, as PyPI
# stood at LOCK_EXCLUDE_NEWER. uv keeps the pins it finds in the output file, so `make lock` over
# the committed lock changes nothing (tests/test_build_and_push.py); a relock from nothing may not
# (docs/development.md). To take newer releases: move the date forward, then
# `make lock LOCK_UPGRADE=--upgrade` (uv then re-resolves every pin).
LOCK_EXCLUDE_NEWER ?= 2026-11-29T08:00:00Z
LOCK_UPGRADE ?=
LOCK_FLAGS := $(LOCK_UPGRADE) --python-version 3.10 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header -q \
  --exclude-newer $(LOCK_EXCLUDE_NEWER)

.PHONY: help test lint image lock bench-image images clean-images
help:
	@sed -n '2,8s/^# //p' Makefile

$(VENV)/.ok: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

# The lint commands and their flags live once, in tests/test_lint.py.
lint: $(VENV)/.ok
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_lint.py

# The tools' venv and the test base image (tests/make-test-base.sh) are made side by side: on a new
# machine each takes about half a minute, mostly downloads.
test:
	tests/make-test-base.sh & base=$$!; \
	  $(MAKE) --no-print-directory $(VENV)/.ok || { wait $$base || true; exit 1; }; \
	  wait $$base
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# The one build path: build_and_push.sh --no-push, with $(DOCKER)'s folder first on PATH
# (a client that builds with BuildKit). IMAGE is NAME:TAG.
image:
	image='$(IMAGE)'; [[ $$image == *:* ]] || { echo "make image: IMAGE must be NAME:TAG" >&2; exit 1; }; \
	$(if $(findstring /,$(DOCKER)),PATH="$(dir $(DOCKER)):$$PATH") ./build_and_push.sh --no-push \
	  --image-name "$${image%:*}" --tag "$${image##*:}" \
	  $(if $(BASE_IMAGE),--base-image '$(BASE_IMAGE)') $(if $(CA_BUNDLE),--ca-bundle '$(CA_BUNDLE)')

lock: $(VENV)/.ok
	$(VENV)/bin/uv pip compile build_image/requirements.txt $(LOCK_FLAGS) -o $(LOCK_DIR)/requirements.lock
	$(VENV)/bin/uv pip compile build_image/tools.in $(LOCK_FLAGS) -o $(LOCK_DIR)/tools.lock

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
