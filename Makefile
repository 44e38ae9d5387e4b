# Loopline: every target sets itself up (creates .venv with the project installed when missing).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SPARK_STAMP := $(VENV)/.installed-spark-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false

.PHONY: demo test test-fast test-e2e lint up down status clean venv browser bench spark java

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

spark: $(SPARK_STAMP)   ## the optional Spark engine in the venv: loopline[spark] (pyspark 4.1, GE's Spark engine)

$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	@touch $(SPARK_STAMP)

java:                   ## a Java 17 runtime for the Spark engine's tests (Debian's openjdk-17-jre-headless)
	@command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null; }

demo: $(STAMP)          ## the whole loop through a real Airflow scheduler (about 4-7 minutes)
	$(BIN)/loopline demo

browser:                ## Debian's Chromium for the UI tests (no browser download at run time)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: $(SPARK_STAMP) browser java  ## every test: unit, DAG integrity, services, browser, Spark, reliability, end to end
	$(BIN)/python -m pytest

test-fast: $(STAMP)     ## the quick unit tests (no Airflow scheduler, no GE/MLflow start-up)
	$(BIN)/python -m pytest -m fast

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e

lint: $(STAMP)
	$(BIN)/ruff check ml dags plugins tests

bench: $(STAMP)         ## benchmarks as ratios against baselines: bench/results.md (python -m bench.run --help)
	$(BIN)/python -m bench.run

up: $(STAMP)            ## serve the Airflow and MLflow UIs over the demo's state (127.0.0.1)
	$(BIN)/loopline up

down: $(STAMP)
	$(BIN)/loopline down

status: $(STAMP)
	$(BIN)/loopline status

clean: down
	rm -rf .loopline
