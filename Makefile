# Kairos: every target works from a fresh clone; `make setup` is a prerequisite of the others.
PYTHON_BASE ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export BENTOML_DO_NOT_TRACK := true
export BENTOML_HOME ?= $(CURDIR)/.venv/bentoml

DEMO := demo
DEMO_CUSTOMERS ?= 50000
AS_OF ?= 2025-12-31
DATA ?= $(DEMO)
TX ?= $(DATA)/transactions.parquet
EV ?= $(DATA)/events.parquet
CU ?= $(DATA)/customers.parquet

.PHONY: setup test demo simulate features lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

$(DEMO)/transactions.parquet: | setup
	$(PY) -m features simulate --customers $(DEMO_CUSTOMERS) --seed 0 --out $(DEMO)

simulate: $(DEMO)/transactions.parquet

features: setup
	$(PY) -m features build --transactions $(TX) --events $(EV) --customers $(CU) --as-of $(AS_OF) --out $(DATA)/features.parquet

demo: simulate
	$(MAKE) --no-print-directory features DATA=$(DEMO)
	$(PY) -m features summary --features $(DEMO)/features.parquet

lint: setup
	$(PY) -m ruff check features training serving tests

format: setup
	$(PY) -m ruff format features training serving tests

clean:
	rm -rf $(DEMO) .pytest_cache

aha: setup
	$(PY) -m features aha --transactions $(TX) --events $(EV) --as-of $(AS_OF) --out $(DATA)/aha

# --- serving (issue 4) ---
.PHONY: serve batch-score
SCORES ?= $(DATA)/scores.parquet

serve: setup
	$(PY) -m serving serve --features $(DATA)/features.parquet

batch-score: setup
	$(PY) -m serving batch --transactions $(TX) --events $(EV) --customers $(CU) --as-of $(AS_OF) --out $(SCORES)
