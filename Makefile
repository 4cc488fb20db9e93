# The two commands: `make run` (set up, build the index if empty, start the bot) and
# `make test`. Both set up the virtual environment first, as the README describes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run index test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $@

# Build the index from COCO_ROOT only when the collection is empty, then start the bot.
run: setup
	$(PY) -m core status || $(PY) index_builder.py
	$(PY) -m bot

# Refresh the index (incremental: only new or changed pictures are embedded).
index: setup
	$(PY) index_builder.py

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py
