# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-video test lint format java clean

# (Re)install when the venv is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

java:
	@command -v java >/dev/null 2>&1 || { echo "capsal: Java is missing; METEOR and the PTB tokenizer need it. Install a JRE (e.g. 'apt-get install default-jre-headless') and re-run." >&2; exit 2; }

# Train (at most 10 minutes on a 2-core CPU), then the paper's tables for the trained model (a few minutes more).
DEMO_DIR := outputs/demo

demo: $(STAMP) java
	$(BIN)/capsal-train experiment=demo_image hydra.run.dir=$(DEMO_DIR)/image
	$(BIN)/capsal-eval ckpt_path=$(DEMO_DIR)/image/checkpoints/last.ckpt hydra.run.dir=$(DEMO_DIR)/image/eval sanity=true

demo-video: $(STAMP) java
	$(BIN)/capsal-train experiment=demo_video hydra.run.dir=$(DEMO_DIR)/video
	$(BIN)/capsal-eval ckpt_path=$(DEMO_DIR)/video/checkpoints/last.ckpt hydra.run.dir=$(DEMO_DIR)/video/eval sanity=true

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) java lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache .ruff_cache
