# CampusHub: `make demo` runs the demo, `make test` runs the tests. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= /usr/bin/python3
VENV ?= .venv
CHP_VERSION := 4.6.3
# The single-user environment for the test cluster's jobs: outside the checkout, world-readable.
SINGLEUSER_ENV ?= /opt/campushub/test-singleuser
# What make test runs after make check (which has run tests/unit); PYTEST_ARGS=tests/integration/test_login.py runs a part.
PYTEST_ARGS ?= tests/integration tests/e2e
# The exact versions CampusHub is tested with, of every Python package: every pip install below uses them.
# A site that must patch a package passes its own copy: make install CONSTRAINTS=site-constraints.txt
CONSTRAINTS ?= constraints.txt
PIP_INSTALL = python -m pip install --quiet --constraint $(CONSTRAINTS)
# The CampusHub Lab extension: installed into the single-user environment and into .venv (the demo's servers).
LAB_EXTENSION := extensions/campushub-lab
# What goes into its wheel; not what its build makes (node_modules, lib, the built labextension, caches).
LAB_EXTENSION_FILES := $(shell find $(LAB_EXTENSION) \( -name node_modules -o -name lib -o -name labextension \
	-o -name coverage -o -name __pycache__ -o -name .ruff_cache -o -name __tests__ \) -prune \
	-o -type f -not -name '*.tsbuildinfo' -print)
# Its JupyterLab front-end (TypeScript) is built by npm with the locked packages (package-lock.json), into
# campushub_lab/labextension, and again only when one of these sources changed; its tests run in make check.
LAB_FRONTEND_SOURCES := $(addprefix $(LAB_EXTENSION)/,package.json package-lock.json .npmrc tsconfig.json) \
	$(wildcard $(LAB_EXTENSION)/src/*.ts $(LAB_EXTENSION)/src/*.tsx $(LAB_EXTENSION)/style/* $(LAB_EXTENSION)/schema/*.json)
LAB_NODE_MODULES := $(LAB_EXTENSION)/node_modules/.package-lock.json
LAB_BUILT := $(LAB_EXTENSION)/campushub_lab/labextension/package.json
# rspack, which builds it, needs Node.js 20.19 or newer (Debian 12's own nodejs is 18: install Node.js 20+)
NODE_MIN := 20.19
NODE_CHECK := const [a, b] = process.versions.node.split(".").map(Number), [x, y] = "$(NODE_MIN)".split(".").map(Number); process.exit(a > x || (a === x && b >= y) ? 0 : 1)

# Node.js for configurable-http-proxy: Debian's, unless a Node.js with npm is already installed.
NODE_PACKAGES := $(if $(shell command -v npm),,nodejs npm)
DEMO_PACKAGES := python3-venv $(NODE_PACKAGES)
# chromium: the browser of the end-to-end tests (Playwright drives /usr/bin/chromium).
# podman, runc, uidmap, slirp4netns: a user's server in a rootless podman container (tests/integration/test_podman.py).
# postgresql: the scheduler's store on PostgreSQL; the tests run a throwaway server of their own (tests/cluster/postgres.py).
# slurmdbd, mariadb-server: the test cluster's accounting, which holds course GPU quotas (tests/cluster/slurm.py).
# debootstrap: the local Debian 12 base of the single-user images (images/build).
# systemd-container: systemd-nspawn boots the deployment tests' hosts, each with systemd (tests/cluster/machines.py).
# prometheus: a real Prometheus scrapes the hub's metrics, and its promtool checks the example alert rules
# (tests/integration/test_metrics.py).
TEST_PACKAGES := $(DEMO_PACKAGES) slurm-wlm munge sudo chromium podman runc uidmap slirp4netns postgresql \
	slurmdbd mariadb-server debootstrap systemd-container prometheus
IMAGE_PACKAGES := podman runc debootstrap

.PHONY: help demo check test hooks lock install system-packages test-system-packages singleuser-env clean clean-demo-state \
	images image-cpu image-gpu check-image-gpu

help:
	@echo "make demo              install what is needed and run the CampusHub demo on http://127.0.0.1:8000"
	@echo "make check             lint, format check and unit tests (no root needed, under a minute)"
	@echo "make test              make check, then install what is needed (as root) and run all tests against a throwaway Slurm cluster"
	@echo "make images            build the single-user images with podman (CPU and GPU; BASE=... for another base image)"
	@echo "make check-image-gpu   build the GPU image (cached) and check it: CUDA libraries, server (GPU=1 on a GPU host)"
	@echo "make bench-scale       as root: 1,000 users, 300 running servers, logins and browsers through hub and proxy (a few minutes)"
	@echo "make hooks             run make check's linters before each git commit (pre-commit)"
	@echo "make lock              resolve the newest releases within pyproject.toml's ranges into constraints.txt"
	@echo "make clean             remove what can be rebuilt: the virtualenv, caches, build outputs"
	@echo "make clean-demo-state  delete the demo's campushub-state/: its database, secrets and every user's files"

demo: install
	$(VENV)/bin/campushub up

# Lint (ruff check), formatting (ruff format --check), the unit tests, the Lab front-end's tests and the
# playbook's lint (ansible-lint, production profile): what a change must pass first.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest tests/unit -q
	cd $(LAB_EXTENSION) && npm test --silent
	cd ansible && PATH=$(abspath $(VENV))/bin:$$PATH ansible-lint --offline --profile production

test: check test-system-packages singleuser-env image-cpu
	CAMPUSHUB_TEST_SINGLEUSER_ENV=$(SINGLEUSER_ENV) $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The single-user images (images/README.md): campushub-singleuser (CPU) and campushub-singleuser-gpu,
# built with podman from a local Debian 12 base (debootstrap) or BASE=<image>; cached between runs in
# IMAGES_CACHE (the base and the wheels) and podman's layer cache. As root.
BASE ?=
IMAGES_CACHE ?= /var/cache/campushub/images
IMAGES_ENV = BASE=$(BASE) IMAGES_CACHE=$(IMAGES_CACHE) CONSTRAINTS=$(CONSTRAINTS)
images:
	@./scripts/apt-ensure $(IMAGE_PACKAGES)
	$(IMAGES_ENV) images/build cpu gpu

image-cpu image-gpu:
	@./scripts/apt-ensure $(IMAGE_PACKAGES)
	$(IMAGES_ENV) images/build $(@:image-%=%)

# The GPU image's checks (images/check-gpu), outside `make test`: the image is several GB. GPU=1 on a host
# with NVIDIA's CDI specification (nvidia-ctk cdi generate) gives the container the GPUs and expects them.
GPU ?=
check-image-gpu: image-gpu
	images/check-gpu $(if $(filter 1,$(GPU)),--gpu)

hooks: install
	$(VENV)/bin/$(PIP_INSTALL) -e '.[dev]'
	$(VENV)/bin/pre-commit install

system-packages:
	@./scripts/apt-ensure $(DEMO_PACKAGES)

test-system-packages:
	@./scripts/apt-ensure $(TEST_PACKAGES)

install: system-packages $(VENV)/.installed

# CampusHub and what it needs (JupyterLab and jupyter-builder among them, which build the Lab front-end)
$(VENV)/.deps: pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/$(PIP_INSTALL) --upgrade pip
	$(VENV)/bin/$(PIP_INSTALL) -e '.[test]'
	touch $@

$(LAB_NODE_MODULES): $(LAB_EXTENSION)/package.json $(LAB_EXTENSION)/package-lock.json
	@node -e '$(NODE_CHECK)' || { echo "the Lab extension's build needs Node.js $(NODE_MIN) or newer, not" \
	  "$$(node --version): install Node.js 20 or newer (Debian 12's nodejs package is 18)" >&2; exit 2; }
	@# the locked versions (npm ci would refuse this lock: it lists rspack's native binary for this platform only)
	cd $(LAB_EXTENSION) && npm install --no-save --silent
	touch $@

$(LAB_BUILT): $(LAB_FRONTEND_SOURCES) $(LAB_NODE_MODULES) $(VENV)/.deps
	cd $(LAB_EXTENSION) && PATH=$(abspath $(VENV))/bin:$$PATH npm run --silent build:prod
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(LAB_EXTENSION_FILES) $(LAB_BUILT)
	$(VENV)/bin/$(PIP_INSTALL) --no-deps --force-reinstall ./$(LAB_EXTENSION)
	npm install --silent --no-save --no-audit --no-fund --prefix $(VENV)/lib/node configurable-http-proxy@$(CHP_VERSION)
	ln -sf ../lib/node/node_modules/.bin/configurable-http-proxy $(VENV)/bin/configurable-http-proxy
	touch $@

singleuser-env: $(SINGLEUSER_ENV)/.installed

$(SINGLEUSER_ENV)/.installed: images/singleuser-requirements.txt $(CONSTRAINTS) $(LAB_EXTENSION_FILES) $(LAB_BUILT)
	test -x $(SINGLEUSER_ENV)/bin/python || /usr/bin/python3 -m venv $(SINGLEUSER_ENV)
	$(SINGLEUSER_ENV)/bin/$(PIP_INSTALL) -r images/singleuser-requirements.txt
	$(SINGLEUSER_ENV)/bin/$(PIP_INSTALL) --no-deps --force-reinstall ./$(LAB_EXTENSION)
	chmod -R a+rX $(SINGLEUSER_ENV) $(dir $(SINGLEUSER_ENV))
	touch $@

# Only what can be rebuilt. The demo's state folder holds users' notebooks: clean-demo-state deletes it.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
	cd $(LAB_EXTENSION) && rm -rf node_modules lib campushub_lab/labextension tsconfig.tsbuildinfo coverage
	find . -path ./campushub-state -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +
	@if [ -d campushub-state ]; then \
	  echo "kept campushub-state/ (the demo's database, secrets and users' files): make clean-demo-state deletes it"; fi

clean-demo-state:
	@if [ -d campushub-state ]; then \
	  echo "deleting campushub-state/: the demo's database, secrets and users' homes with every file in them:"; \
	  for home in campushub-state/homes/*/; do [ -d "$$home" ] && echo "  $$home"; done; \
	  rm -rf campushub-state; \
	else \
	  echo "no campushub-state/ here: nothing to delete"; \
	fi

# constraints.txt from scratch: a throwaway environment gets the newest releases that pyproject.toml's ranges
# (with the test and dev extras), the single-user environment and the benchmark's stock peer allow, and pip
# freeze writes them down. Then run make test on them, and commit constraints.txt with what made it change.
LOCK_ENV := $(shell echo $${TMPDIR:-/tmp})/campushub-lock-env
lock:
	rm -rf $(LOCK_ENV)
	$(PYTHON) -m venv $(LOCK_ENV)
	$(LOCK_ENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_ENV)/bin/python -m pip install --quiet '.[dev]' -r images/singleuser-requirements.txt \
		-r images/image-requirements.txt -r images/gpu-requirements.txt ./$(LAB_EXTENSION) $(BENCH_PACKAGES)
	{ sed -n '/^#/p' constraints.txt; \
	  $(LOCK_ENV)/bin/python -m pip freeze --all --exclude setuptools --exclude campushub --exclude campushub-lab; \
	} > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_ENV)

# Spawn-to-ready benchmark (as root, about 13 minutes): CampusHub's Slurm spawner vs stock batchspawner
# vs a bare jupyterhub-singleuser, on a throwaway Slurm cluster. BENCH_ARGS="--write docs/benchmarks.md"
# refreshes the results page; it waits for the machine's test lock (see benchmarks/README.md).
BENCH_ARGS ?=
# the stock peer's port reporter (batchspawner-singleuser) and what it needs
BENCH_PACKAGES := batchspawner==1.3.0 requests
.PHONY: bench
bench: test-system-packages install singleuser-env
	$(SINGLEUSER_ENV)/bin/$(PIP_INSTALL) $(BENCH_PACKAGES)
	CAMPUSHUB_TEST_SINGLEUSER_ENV=$(SINGLEUSER_ENV) $(VENV)/bin/python -m benchmarks.spawn $(BENCH_ARGS)

# Scheduler benchmark (no root, no Slurm, about 6 minutes on 2 cores): the nightly-notebooks service's per-run
# overhead against bare papermill of the same notebook, and 100 runs due in the same minute under the limits.
# BENCH_ARGS="--write docs/benchmarks.md" refreshes its section of the results page; --runs 3 for a quick check.
.PHONY: bench-scheduler
bench-scheduler: install
	$(VENV)/bin/python -m benchmarks.scheduler $(BENCH_ARGS)

# Courses benchmark (as root, a few minutes): `campushub course apply` of a 1,000-student roster with a GPU quota
# against a real hub and the test harness's Slurm with accounting, then again with nothing to change (targets
# 15 s and 2 s), beside one REST call per student and sacctmgr.
# BENCH_ARGS="--write docs/benchmarks.md" refreshes its section of the results page; --rounds 1 for a quick check.
.PHONY: bench-courses
bench-courses: test-system-packages install
	$(VENV)/bin/python -m benchmarks.courses $(BENCH_ARGS)

# Docker backend benchmark (as root, a few minutes): spawn to ready through the Docker backend (podman's Docker
# API) against the bare `podman run` of the same image, then 10 users at once (targets 1.3x and no failure).
# BENCH_ARGS="--write docs/benchmarks.md" refreshes its section of the results page; --rounds 2 for a quick check.
.PHONY: bench-docker
bench-docker: test-system-packages install
	$(VENV)/bin/python -m benchmarks.docker $(BENCH_ARGS)

# Scale benchmark (as root, about 3 minutes a proxy): 1,000 users, 300 with a running server (the benchmark's own
# minimal servers, one process), through the real hub, proxy and campus login, with logins at 10/s, activity and
# browsers polling for a minute; chp and traefik side by side (targets: 0 errors, login p95 1 s, proxied p95 50 ms).
# BENCH_ARGS="--write docs/benchmarks.md" refreshes its section of the results page;
# BENCH_ARGS="--users 100 --servers 30 --load-seconds 15" for a quick check.
.PHONY: bench-scale
bench-scale: install
	$(VENV)/bin/python -m benchmarks.scale $(BENCH_ARGS)
