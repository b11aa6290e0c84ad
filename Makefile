# make run  : set up, then run the quickstart on the embedded model (no API key, no network)
# make test : set up with dev dependencies, then the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# requirements.lock pins every package; --no-deps installs exactly it (reproducible, no resolver surprises).
$(STAMP): $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/alignflow run configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
