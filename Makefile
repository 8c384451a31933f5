# The two commands a newcomer needs: `make quickstart` and `make test`.
# Both create .venv if missing and install what they need (plain pip: torch comes from the
# local wheel files pip knows about; uv/poetry would download 3 GB instead).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= runs/quickstart

export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export NO_PROXY := 127.0.0.1,localhost

.PHONY: install quickstart test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/langfree quickstart --outdir $(OUT)

# The web UI's browser tests drive Debian's chromium (playwright's own browser download needs a
# network this machine does not have).
CHROMIUM := /usr/bin/chromium

# Where it cannot be installed, the browser tests skip with that reason (.ci/run sets
# LANGFREE_REQUIRE_BROWSER=1, which turns the skip into a failure).
$(CHROMIUM):
	-apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
