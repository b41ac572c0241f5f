# Two commands: `make demo` (the main job) and `make test` (the test suite).
# Each installs what it needs into .venv on first use. torch is installed as the
# pinned CPU build 2.13.0 *before* the package, so pip never pulls a CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	@# this project's distribution was once named "gradscope" (the name of another project
	@# on PyPI); drop an old install of it so that only gradscope-rnn owns the package
	-$(BIN)/python -m pip uninstall -q -y gradscope 2>/dev/null
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

# The demo writes a PDF too, printed by headless Chromium: `browser` makes sure it is there.
demo: $(STAMP) browser
	$(BIN)/gradscope demo

# Headless Chromium (the PDF engine) and poppler-utils (the report tests), Debian packages.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
	  else echo "note: install Debian packages 'chromium' (PDF reports) and 'poppler-utils' (PDF tests)"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) browser lint
	$(BIN)/pytest
