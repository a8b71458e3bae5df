# Two entry points: `make demo` and `make test`. Both create .venv with the Python 3.11 they find.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned: pip takes these exact builds from the machine's disk (DEVELOPERS.md).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo demo-quick test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dicom]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-run
	$(BIN)/python -m pip install -q -e ".[dicom,dev]"
	touch $@

demo: $(VENV)/.stamp-run
	$(BIN)/cxrmtl demo --out demo_out

demo-quick: $(VENV)/.stamp-run
	$(BIN)/cxrmtl demo --out demo_out_quick --quick

test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -n 2 --dist loadgroup --timeout 900

test-fast: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo_out demo_out_quick
