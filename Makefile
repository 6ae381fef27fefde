# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-video test lint format java chromium device-site clean

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

# $(1): image or video; $(2): steps run first in the run's folder "$$run" (each ending in &&); $(3): more
# capsal-train overrides; $(4): the checkpoint evaluated (last: the weights training ended with; best: the lowest
# validation loss).
define demo_run
	@run="$(DEMO_DIR)/$(1)/$$(date +%Y-%m-%d_%H-%M-%S_%N)"; \
	$(2) $(BIN)/capsal-train experiment=demo_$(1) hydra.run.dir="$$run" $(3) $(DEMO_ARGS) && \
	ln -sfn "$$(basename "$$run")" "$(DEMO_DIR)/$(1)/latest" && \
	$(BIN)/capsal-eval ckpt_path="$$run/checkpoints/$(4).ckpt" hydra.run.dir="$$run/eval" sanity=true \
		$(DEMO_EVAL_ARGS)
endef

# The video demo is the paper's pipeline, the path users take on MSVD/MSR-VTT, in four steps inside the run's folder:
#   backbone/  capsal-train experiment=demo_video_backbone: pre-train a CNN by captioning shapes_image (<= 4 min)
#   features/  capsal-extract backbone=checkpoint: its frozen 8x8 grids of every 64x64 shapes_video frame, cached
#   .          capsal-train experiment=demo_video: S2VT on the cached grids, frame descriptor = grid mean (<= 4.5 min)
#   eval/      capsal-eval of checkpoints/best.ckpt (lowest validation loss): temporal and spatial pointing,
#              captioning, sanity check
# DEMO_VIDEO_DATA: the video datamodule's overrides, given to extraction and training alike (the cache checks them);
# DEMO_BACKBONE_ARGS / DEMO_EXTRACT_ARGS: more overrides for the first two steps. Paths are absolute: the checkpoints
# record the backbone's path. DEMO_THREADS: torch threads per process; on a busy 2-core machine two threads fight
# for the cores (docs/demo.md, make demo-video).
DEMO_VIDEO_DATA ?= datamodule.frame_size=64
DEMO_BACKBONE_ARGS ?=
DEMO_EXTRACT_ARGS ?=
DEMO_THREADS ?= 1
DEMO_VIDEO_STEPS = export OMP_NUM_THREADS=$(DEMO_THREADS) && mkdir -p "$$run" && abs="$$(cd "$$run" && pwd)" && \
	$(BIN)/capsal-train experiment=demo_video_backbone hydra.run.dir="$$abs/backbone" $(DEMO_BACKBONE_ARGS) && \
	$(BIN)/capsal-extract datamodule=shapes_video $(DEMO_VIDEO_DATA) backbone=checkpoint \
		backbone.checkpoint="$$abs/backbone/checkpoints/last.ckpt" features_dir="$$abs/features" \
		hydra.run.dir="$$abs/extract" $(DEMO_EXTRACT_ARGS) &&
DEMO_VIDEO_TRAIN = $(DEMO_VIDEO_DATA) datamodule.features_dir="$$abs/features" \
	model.backbone.checkpoint="$$abs/backbone/checkpoints/last.ckpt"

demo: $(STAMP) java
	$(call demo_run,image,,,last)

demo-video: $(STAMP) java
	$(call demo_run,video,$(DEMO_VIDEO_STEPS),$(DEMO_VIDEO_TRAIN),best)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The suite runs in TEST_WORKERS processes (pytest-xdist; default: one per core), a test module at a time on one
# worker (its module fixtures are built once), each with one torch thread (OMP_NUM_THREADS=1, inherited by the apps
# the tests start), so the workers do not fight over the cores. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

test: $(STAMP) java chromium lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The pure-Python packages a GPU machine's stock PyTorch image lacks (benchmarks/device_check.sh), copied from the
# venv into .devsite/ (ignore it in .git/info/exclude; carry it and put it on PYTHONPATH there).
device-site: $(STAMP)
	rm -rf .devsite && mkdir .devsite
	cd $$($(BIN)/python -c "import hydra, os; print(os.path.dirname(os.path.dirname(hydra.__file__)))") && \
		cp -r hydra omegaconf antlr4 $(CURDIR)/.devsite/

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache .ruff_cache
