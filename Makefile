# The two commands: `make run` (set up, check the token, get pictures and build the index
# when needed, start the bot) and `make test`. Both set up the virtual environment first, as
# the README describes.
#
#   make run                      # COCO2014 val2014 (downloaded if missing) when the index is empty
#                                 # (or its first build was interrupted: then it is finished)
#   make run SPLIT=all            # all of COCO2014 (train2014 + val2014, about 19 GB)
#   make run FOLDER=~/Pictures    # your own photos
#   make run URLS=list.tsv        # a caption + URL list (Conceptual Captions TSV, CSV, JSONL)
#   make setup GPU=1              # PyPI's CUDA build of torch instead of the CPU build
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
# PyPI's Linux torch wheel is the multi-GB CUDA build; PyTorch's CPU index has the CPU one.
TORCH_INDEX := $(if $(GPU),,--extra-index-url https://download.pytorch.org/whl/cpu)
SOURCE := $(if $(FOLDER),--folder "$(FOLDER)",$(if $(URLS),--urls "$(URLS)",--download --split $(or $(SPLIT),val2014)))
# The bot sends pictures only from folders the host names (never the index's word): FOLDER joins
# PICTURE_ROOTS for the bot (the builder also records it in this host's roots file).
BOT_ENV := $(if $(FOLDER),PICTURE_ROOTS="$(FOLDER)",)

.PHONY: setup run index test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH) $(TORCH_INDEX)
	$(PY) -m pip install -e ".[dev]"
	touch $@

# The token is checked first (seconds), before any download or build (up to hours); the
# builder then checks CLIP_MODEL, the store, COCO_BASE_URL and the disk (seconds) before it
# downloads anything. With no SPLIT, FOLDER or URLS the index is built only when it is empty
# or COCO's last build did not finish (Ctrl-C during the first build: this run finishes it;
# an index of other pictures is left as it is); with one, it is brought up to date
# (incremental: only what is new or changed is embedded).
run: setup
	$(PY) -m bot --check
ifeq ($(SPLIT)$(FOLDER)$(URLS),)
	$(PY) index_builder.py $(SOURCE) --if-needed
else
	$(PY) index_builder.py $(SOURCE)
endif
	$(BOT_ENV) $(PY) -m bot

# Refresh the index (incremental: only new or changed pictures are embedded).
index: setup
	$(PY) index_builder.py $(SOURCE)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py
