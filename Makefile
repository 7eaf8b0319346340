# Keyturn: the two commands are `make demo` and `make test`; both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMPS := .make-stamps

.PHONY: demo test lint format bench bench-smoke sysdeps-build sysdeps-demo sysdeps-test venv clean

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

# The benchmark suite (docs/benchmarks.md): every script measures its floor in the same run and
# saves JSON under bench/results/. `make bench` takes 5–8 minutes on 2 CPUs; `make
# bench-smoke` runs each one smoke-sized (CI, so the benchmarks never rot) in 1–2 minutes.
BENCHES := time_to_access ldap_access revocation_scale revocation_lag restart policy_decision \
           audit_verify gateway

bench: sysdeps-test venv
	@set -e; for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py; done
	$(BIN)/python bench/report.py

bench-smoke: sysdeps-test venv
	@set -e; for b in $(BENCHES); do echo "== bench/$$b.py --smoke"; \
	  $(BIN)/python bench/$$b.py --smoke; done
	$(BIN)/python bench/report.py --smoke --check

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
