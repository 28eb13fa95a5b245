# Kairos: every target works from a fresh clone; each depends on `setup`, which builds ./.venv once.
SHELL := bash
.SHELLFLAGS := -e -o pipefail -c  # a failing command fails its target, also inside a pipe (train | tee)
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
HORIZON ?= 90
VALUE_HORIZON ?= 365
TRIALS ?= 20
EXPERIMENT ?= kairos
DATA ?= $(DEMO)
TX ?= $(DATA)/transactions.parquet
EV ?= $(DATA)/events.parquet
CU ?= $(DATA)/customers.parquet
SCORES ?= $(DATA)/scores.parquet
# optional inputs are passed only when their file exists
OPT = $$([ -f $(EV) ] && echo --events $(EV)) $$([ -f $(CU) ] && echo --customers $(CU))
# the Aha rules of `make aha`, once they exist, drive the new customers' message (serving/policy.yaml, aha)
AHA_RULES ?= $(DATA)/aha/aha_rules.csv
AHA_OPT = $$([ -f $(AHA_RULES) ] && echo --aha-rules $(AHA_RULES))
TRAIN_ARGS = --transactions $(TX) $(OPT) --as-of $(AS_OF) --horizon-days $(HORIZON) \
	--value-horizon-days $(VALUE_HORIZON) --experiment $(EXPERIMENT)

.PHONY: setup test demo simulate features train tune evaluate promote mlflow-ui aha serve batch-score bench \
	lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,spark]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

$(DEMO)/transactions.parquet: | setup
	$(PY) -m features simulate --customers $(DEMO_CUSTOMERS) --seed 0 --out $(DEMO)

simulate: $(DEMO)/transactions.parquet

features: setup
	$(PY) -m features build --transactions $(TX) $(OPT) --as-of $(AS_OF) --out $(DATA)/features.parquet $(AHA_OPT)

train: setup
	$(PY) -m training train $(TRAIN_ARGS) | tee $(DATA)/train.json | tail -c 400; echo

tune: setup
	$(PY) -m training tune $(TRAIN_ARGS) --trials $(TRIALS)

evaluate: setup
	$(PY) -m training evaluate $(TRAIN_ARGS) --out $(DATA)/backtest

# promote the newest version (VERSION=n to choose); the gate compares it with the champion
promote: setup
	@v=$${VERSION:-$$($(PY) -c 'import json; print(json.loads(open("$(DATA)/train.json").read().splitlines()[-1])["registered_version"])' 2>/dev/null || true)}; \
	if [ -z "$$v" ]; then echo "error: no version to promote: run make train (it writes $(DATA)/train.json) or give VERSION=n" >&2; exit 2; fi; \
	echo "$(PY) -m training promote --version $$v"; $(PY) -m training promote --version $$v

mlflow-ui: setup
	$(PY) -m mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

aha: setup
	$(PY) -m features aha --transactions $(TX) --events $(EV) --as-of $(AS_OF) --out $(DATA)/aha

serve: setup
	$(PY) -m serving serve --features $(DATA)/features.parquet $(AHA_OPT)

batch-score: setup
	$(PY) -m serving batch --transactions $(TX) $(OPT) --as-of $(AS_OF) --out $(SCORES) \
		--features-out $(DATA)/features.parquet $(AHA_OPT)

# the demo: simulate, train and register, promote, Aha moments, score everyone, show whom to nudge
# the demo's own inputs and outputs, whatever DATA/TX/EV/CU/SCORES the command line gives
DEMO_VARS = DATA=$(DEMO) TX=$(DEMO)/transactions.parquet EV=$(DEMO)/events.parquet CU=$(DEMO)/customers.parquet \
	SCORES=$(DEMO)/scores.parquet AHA_RULES=$(DEMO)/aha/aha_rules.csv
demo: simulate
	$(MAKE) --no-print-directory train $(DEMO_VARS)
	$(MAKE) --no-print-directory promote $(DEMO_VARS)
	$(MAKE) --no-print-directory aha $(DEMO_VARS)
	$(MAKE) --no-print-directory batch-score $(DEMO_VARS)
	$(PY) -m features summary --features $(DEMO)/features.parquet
	$(PY) -m serving top --scores $(DEMO)/scores.parquet --n 10

# bench_serving scores with the demo's champion and snapshot, so the demo runs first (once)
bench: demo
	$(PY) bench/bench_features.py --customers 100000 1000000
	$(PY) bench/bench_aha.py
	$(PY) bench/bench_serving.py --features $(DEMO)/features.parquet

lint: setup
	$(PY) -m ruff check features training serving tests bench

format: setup
	$(PY) -m ruff format features training serving tests bench

clean:
	rm -rf $(DEMO) .pytest_cache

# --- uplift (issue 6): the Hillstrom e-mail experiment, adapted into $(DATA)/hillstrom on first use ---
.PHONY: uplift
HILLSTROM_SRC ?= ../shared/data/hillstrom
HILLSTROM := $(DATA)/hillstrom
RESPONSE_DAYS ?= 14

$(HILLSTROM)/customers.parquet: | setup
	$(PY) -m features adapt --source hillstrom --input $(HILLSTROM_SRC) --out $(HILLSTROM)

uplift: setup $(HILLSTROM)/customers.parquet
	$(PY) -m training uplift --customers $(HILLSTROM)/customers.parquet --nudges $(HILLSTROM)/nudges.parquet \
		--transactions $(HILLSTROM)/transactions.parquet --response-days $(RESPONSE_DAYS) \
		--score-customers $(HILLSTROM)/customers.parquet --out $(HILLSTROM)/uplift
