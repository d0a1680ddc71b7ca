# ordersaga: `make dev` installs the run-time pins into .venv and runs the system; `make test` adds
# the test pins (each installed once, again when its pins change) and runs every test.

# The first interpreter that runs and is >= 3.11; override with `make PYTHON=/path/to/python3`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; \
	done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install dev test test-fast lint format lock check-floors serve clean python

python:
	@test -n "$(PYTHON)" || { echo "make: no Python >= 3.11 found (tried python3.13, python3.12, python3.11, python3); install one or pass PYTHON=/path/to/python3" >&2; exit 1; }

# Run time only: the stamp is older than the pins or the project metadata → refresh.
$(STAMP): pyproject.toml requirements.lock
	@$(MAKE) --no-print-directory python
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The test and benchmark toolchain on top, held to the run-time pins.
$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(BIN)/python -m pip install --quiet -r requirements-test.lock -c requirements.lock
	@touch $(TEST_STAMP)

install: $(STAMP)

# The whole system on this machine; Ctrl-C stops it. State lives in .data/.
dev: $(STAMP)
	$(BIN)/ordersaga up

# Three workers (pytest-xdist) on two cores: most real-process tests wait on timers and I/O, so a
# third keeps the cores busy (8 min 21 s against 9 min 29 s with two, README: Install and test).
# In-process service tests spread over all of them while each real-process stack keeps to one
# worker (tests/conftest.py groups them, longest first: hence no reorder by size).
# Capacity tests (`serial`) run alone after. `make test TEST_WORKERS=0` runs everything in one process;
# exit status 5 (nothing selected) is fine. ORDERSAGA_TEST_FULL=1 adds the long variants (marker full).
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10
test: $(TEST_STAMP)
	@parallel=0; serial=0; \
	$(PYTEST) -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --max-worker-restart=0 -m "not serial" $(PYTEST_ARGS) || parallel=$$?; \
	$(PYTEST) -m serial $(PYTEST_ARGS) || serial=$$?; \
	for status in $$parallel $$serial; do [ $$status -eq 0 ] || [ $$status -eq 5 ] || exit $$status; done

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -x -m "not slow" $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services workflows activities workers ordersaga

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin after editing pyproject.toml, in a scratch venv: requirements.lock holds what `pip install .`
# brings; requirements-test.lock holds what the `dev` extra adds, resolved together so versions agree.
LOCK_VENV := $(VENV)-lock
lock: python
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/python -m pip install --quiet '.[dev]'
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -vE '^(ordersaga|pip|setuptools|wheel)==' | sort -f > $(LOCK_VENV)/all.txt
	$(LOCK_VENV)/bin/python -m pip uninstall --quiet --yes ordersaga
	$(LOCK_VENV)/bin/python -m venv --clear $(LOCK_VENV)/run
	$(LOCK_VENV)/run/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(LOCK_VENV)/run/bin/python -m pip install --quiet -c $(LOCK_VENV)/all.txt .
	$(LOCK_VENV)/run/bin/python -m pip freeze --all --exclude-editable | grep -vE '^(ordersaga|pip|setuptools|wheel)==' | sort -f > requirements.lock
	grep -vxFf requirements.lock $(LOCK_VENV)/all.txt > requirements-test.lock
	rm -rf $(LOCK_VENV)

# Every run-time dependency at its pyproject.toml floor (pip resolves the indirect ones), then the
# suites that exercise them: the floors are versions the code has run on, not guesses.
FLOOR_VENV := $(VENV)-floors
FLOOR_TESTS ?= tests/replay tests/services tests/gateway/test_rate_limits.py tests/saga/test_saga_paths.py
check-floors: python
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(PYTHON) tools/direct_floors.py > $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/python -m pip install --quiet -r $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-test.lock
	$(FLOOR_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider -p no:schemathesis $(FLOOR_TESTS)

serve: $(STAMP)
	$(BIN)/ordersaga serve $(SERVICE)

clean:
	rm -rf $(VENV) $(VENV)-floors $(VENV)-lock .data .pytest_cache .mypy_cache .ruff_cache
