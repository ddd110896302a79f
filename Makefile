# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with (CPU-usable, CUDA-capable).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv quickstart test test-fast clean

$(BIN)/hpsearch: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/hpsearch

venv: $(BIN)/hpsearch

quickstart: venv
	$(BIN)/hpsearch run studies/quickstart.yaml

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not postgres and not browser"

clean:
	rm -rf runs report.html
