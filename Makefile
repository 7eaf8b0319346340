# Keyturn: the two commands are `make demo` and `make test`; both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMPS := .make-stamps

.PHONY: demo test lint format bench sysdeps-build sysdeps-demo sysdeps-test venv clean

demo: sysdeps-demo venv
	$(BIN)/keyturn demo

test: sysdeps-test venv
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src

format: venv
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: sysdeps-test venv
	$(BIN)/python bench/policy_decision.py
	$(BIN)/python bench/revocation_lag.py
	$(BIN)/python bench/gateway.py

sysdeps-build:
	@scripts/system-deps.sh build

sysdeps-demo:
	@scripts/system-deps.sh demo

sysdeps-test:
	@scripts/system-deps.sh test

venv: sysdeps-build $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml constraints.txt
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	@touch $@

clean:
	rm -rf $(VENV) $(STAMPS) .mypy_cache .ruff_cache .pytest_cache
