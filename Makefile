# make run  : set up, then run the quickstart on the embedded model (no API key, no network)
# make test : set up with dev dependencies, then the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test browser clean

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

test: install browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The UI tests drive Debian's chromium (playwright downloads no browser); as root, install it if it is missing.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the UI tests"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || \
	  echo "chromium could not be installed: the UI tests will be skipped"; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
