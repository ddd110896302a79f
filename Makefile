# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# torch/torchvision pinned to the builds this project is tested with (CPU-usable, CUDA-capable).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv dev quickstart test test-fast clean

# What running needs: the package and its dependencies, no test tools.
$(BIN)/hpsearch: pyproject.toml
	@test -x $(BIN)/python || { echo "==> creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing $(TORCH) (the largest step: a few minutes on a fresh machine)"
	$(PIP) install --progress-bar on $(TORCH)
	@echo "==> installing hpsearch and its dependencies"
	$(PIP) install --progress-bar on -e .
	@touch $(BIN)/hpsearch

# What the tests need on top: pytest, the PostgreSQL driver, optuna-dashboard, kaleido, linters.
$(VENV)/.dev: $(BIN)/hpsearch
	@echo "==> installing the test tools (dev extras)"
	$(PIP) install --progress-bar on -e '.[dev]'
	@touch $(VENV)/.dev

venv: $(BIN)/hpsearch

dev: $(VENV)/.dev

quickstart: venv
	$(BIN)/hpsearch run studies/quickstart.yaml

test: dev
	$(BIN)/python -m pytest

test-fast: dev
	$(BIN)/python -m pytest -m "not slow and not postgres and not browser and not slurm"

clean:
	rm -rf runs best report.html predictions.csv
