# The two entry points of the README: `make run` (embedded default) and `make test` (everything).
# `make test-fast`: the tests that need no PostgreSQL and no Kafka and are not slow (no services).
PYTHON ?= python3
# pytest-xdist workers. The suite waits on servers and subprocesses more than it computes, so
# more workers than this machine's two cores pay off (README, Tests).
TEST_WORKERS ?= 4
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := lifecycle projections consumers schemas
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast install services services-ready services-down lint bench wrk clean

# Migrations first (idempotent; on the embedded default also the three services' stores).
run: install
	$(BIN)/lifecycle migrate
	$(BIN)/lifecycle serve --host $(HOST) --port $(PORT)

# The servers are launched beside the Python install and lint (services-ready); then the fault
# tier (servers of its own, niceness -5 where permitted) runs beside the other tiers' xdist
# workers (niceness 10): scripts/test-tiers.
test:
	$(MAKE) --no-print-directory -j2 lint services-ready
	scripts/test-tiers $(TEST_WORKERS)

# Two workers: it computes rather than waits, and each worker collects the whole suite again.
test-fast: install
	$(BIN)/pytest -n 2 -m "not postgres and not kafka and not slow"

# Every interpreter the tests start (xdist workers, CLI and worker subprocesses) reads compiled
# bytecode instead of compiling its imports again (about a second of CPU each), even where the
# environment asks Python not to write any (PYTHONDONTWRITEBYTECODE): caches are git-ignored.
test test-fast: export PYTHONDONTWRITEBYTECODE :=

install: $(VENV)/.installed

# uv by the interpreter's own pip (3 s less than seeding pip into .venv first); where that pip
# is missing or too old for --python, by a pip seeded into .venv after all.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip --python $(BIN)/python install --quiet --upgrade uv 2>/dev/null || \
		{ $(BIN)/python -m ensurepip --upgrade >/dev/null && $(BIN)/python -m pip install --quiet --upgrade uv; }
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[test]'
	touch $@

services:
	scripts/services up --secure

# For make test: the servers launched at once (on a fresh machine also their packages, jars and
# initdb) beside the Python install, which spends seconds waiting on the package index, and then
# lint; waited for once launched.
services-ready:
	scripts/services start --secure
	scripts/services up --secure

services-down:
	scripts/services down

lint: install
	$(BIN)/ruff check $(PACKAGES) tests bench
	$(BIN)/ruff format --check $(PACKAGES) tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install services wrk
	$(BIN)/python -m bench

# The HTTP case's load generator (Debian's package); stops with one line where it cannot.
wrk:
	@bench/install-wrk

clean: services-down
	rm -rf $(VENV) data .services
