# Tierline: `make run` starts the embedded stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test browser drill lint format bench bench-write bench-projector bench-production bench-sla bench-webhooks bench-tansu bench-targets schemas clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tierline dev --demo

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault drill of the production shape (bench/drill.py): each fault on its own run, then
# all in one; figures in bench/results/drill.json. `make test` runs the short drill.
drill: $(STAMP)
	$(BIN)/python -m bench.drill

# Chromium for the board's browser tests, from the distribution (deploy/browser/).
browser:
	bash deploy/browser/ensure-chromium.sh

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format services tests bench
	$(BIN)/ruff check --fix services tests bench

schemas: $(STAMP)
	$(BIN)/python -m tierline.schemagen

# Every figure of bench/README.md, into bench/results/*.json (about 25 minutes on 2 cores).
bench: bench-write bench-projector bench-production bench-sla bench-webhooks bench-tansu
	$(BIN)/python -m bench.targets

# The targets table of bench/README.md from the results files of the run above (no measuring).
bench-targets: $(STAMP)
	$(BIN)/python -m bench.targets

bench-write: $(STAMP)
	$(BIN)/python -m bench.write_path

bench-projector: $(STAMP)
	$(BIN)/python -m bench.projector

# Freshness in the production shape: api, relay and projector processes on Apache Kafka.
bench-production: $(STAMP)
	$(BIN)/python -m bench.projector --skip-replay --shape separate --name projector_freshness_separate_kafka

# On the topic = the relay marked the breach published after the broker's ack; the topic is
# read back after the run (a live reader loads the broker it measures). Both shapes.
bench-sla: $(STAMP)
	$(BIN)/python -m bench.sla --clocks 100000 --rate 620,1000 --read-after --name sla
	$(BIN)/python -m bench.sla --clocks 100000 --rate 620,1000 --read-after --broker kafka --name sla_kafka

bench-webhooks: $(STAMP)
	$(BIN)/python -m bench.webhooks

# What partitions and a log of small batches cost Tansu, with tierline dev's three consumers.
bench-tansu: $(STAMP)
	$(BIN)/python -m bench.tansu_partitions --runs 2
	$(BIN)/python -m bench.tansu_partitions --partitions 1,12 --consumers 3 --fill 0,30000,60000 --runs 1 --name tansu_fill
	$(BIN)/python -m bench.tansu_partitions --partitions 1,12 --consumers 3 --fill 60000 --fill-large-batches --runs 1 --name tansu_fill_large
	$(BIN)/python -m bench.tansu_partitions --rate 0 --partitions 12,1 --consumers 3 --runs 2 --name tansu_idle

clean:
	rm -rf $(VENV) .tierline .pytest_cache .mypy_cache .ruff_cache
