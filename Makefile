# Two entry points, each doing its own set-up in .venv (see README).
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test report build run bench lint

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (Python 3.11)"; exit 1; }
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch before anything that depends on it, so the CPU wheel is chosen (shared/toolchain.md).
	$(VENV)/bin/pip install -q 'torch>=2.4,<2.14'
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

# the suite on TEST_WORKERS processes (pytest-xdist), a test file per worker at a time
# (module fixtures are built once); the slowest tests are listed at the end
TEST_WORKERS ?= 2

test: lint
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

report: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m models eval --model minilm

build: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m gen build --model minilm --out build/minilm

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m host run --bundle build/minilm --sim

bench: $(STAMP)
	$(VENV)/bin/python -m pytest -q -s -m benchmark bench tests/sim/test_block_verilator.py

# ruff everywhere; mypy on the packages [tool.mypy] in pyproject.toml names (accel/, host/, hw/, sim/)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m mypy
