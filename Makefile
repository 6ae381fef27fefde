# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-video test lint format java chromium clean

# (Re)install when the venv is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

java:
	@command -v java >/dev/null 2>&1 || { echo "capsal: Java is missing; METEOR and the PTB tokenizer need it. Install a JRE (e.g. 'apt-get install default-jre-headless') and re-run." >&2; exit 2; }

# Headless Chromium for the gallery's browser test: Debian's package, installed when missing and we are root; a failed
# install as root stops here; without root it says so in one line and the test skips with the same hint.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "capsal: installing Debian's chromium for the gallery browser test"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && command -v chromium >/dev/null; } \
			|| { echo "capsal: 'apt-get install chromium' failed; install it by hand (the gallery browser test needs it) and re-run" >&2; exit 2; }; \
	else \
		echo "capsal: chromium is not installed and we are not root: the gallery browser test will skip (run make test as root or apt-get install chromium)"; \
	fi

# Train (at most 10 minutes on a 2-core CPU), then the paper's tables for the trained model (a few minutes more).
# Every run trains into a fresh folder <DEMO_DIR>/<image|video>/<date_time>, points <DEMO_DIR>/<image|video>/latest at
# it, and evaluates the checkpoint that this run saved (never a previous run's). DEMO_ARGS / DEMO_EVAL_ARGS add
# overrides to capsal-train / capsal-eval.
DEMO_DIR ?= outputs/demo
DEMO_ARGS ?=
DEMO_EVAL_ARGS ?=

define demo_run
	@run="$(DEMO_DIR)/$(1)/$$(date +%Y-%m-%d_%H-%M-%S_%N)"; \
	$(BIN)/capsal-train experiment=demo_$(1) hydra.run.dir="$$run" $(DEMO_ARGS) && \
	ln -sfn "$$(basename "$$run")" "$(DEMO_DIR)/$(1)/latest" && \
	$(BIN)/capsal-eval ckpt_path="$$run/checkpoints/last.ckpt" hydra.run.dir="$$run/eval" sanity=true $(DEMO_EVAL_ARGS)
endef

demo: $(STAMP) java
	$(call demo_run,image)

demo-video: $(STAMP) java
	$(call demo_run,video)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) java chromium lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache .ruff_cache
