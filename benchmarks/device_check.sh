#!/usr/bin/env bash
# One device check, no install and no network: the gpu-marked tests, then the explainer benchmarks, printed as
# BENCHMARKS.md rows under the card's (or the CPU's) name, demo and paper sizes. 3 minutes on one H200.
#   benchmarks/device_check.sh [--device cuda|cpu]
# A stock PyTorch GPU image lacks hydra-core and omegaconf: `make device-site` copies them into .devsite/, which the
# device run carries and puts first on PYTHONPATH (PYTHONPATH=$PWD/.devsite PYTHON=python3 benchmarks/device_check.sh).
set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE="${2:-cuda}"
PY="${PYTHON:-}"
[ -z "$PY" ] && for p in .venv/bin/python /work/main/.venv/bin/python python3; do command -v "$p" >/dev/null && PY=$p && break; done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NAME=$("$PY" -c "import torch,platform; print(torch.cuda.get_device_name() if '$DEVICE'=='cuda' and torch.cuda.is_available() else 'CPU ' + (platform.processor() or platform.machine()) + f' ({torch.get_num_threads()} threads)')")
echo "## Device check: $NAME, torch $("$PY" -c 'import torch; print(torch.__version__)')"
echo
echo "### gpu tests (pytest -m gpu)"
timeout 200 "$PY" -m pytest -m gpu -q -rs --tb=short -p no:warnings -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -60
echo
echo "### $NAME: caption_guided explainer (benchmarks/bench_explain.py --skip-slow --device $DEVICE)"
for args in "" "--video"; do
  timeout 150 "$PY" benchmarks/bench_explain.py --device "$DEVICE" --skip-slow --repeats 5 $args || echo "(bench_explain $args stopped: exit $?)"
  echo
done
echo "### $NAME: caption_guided at the paper's size (bench_explain.py --size paper --skip-slow --budget-mb 2048)"
for args in "--words 16 40" "--words 16 40 --precision bf16-mixed" "--video --words 16"; do
  timeout 240 "$PY" benchmarks/bench_explain.py --device "$DEVICE" --size paper --skip-slow --repeats 3 --budget-mb 2048 $args \
    || echo "(bench_explain --size paper $args stopped: exit $?)"
  echo
done
echo "### $NAME: precision (benchmarks/bench_precision.py --device $DEVICE)"
MIXED=bf16-mixed
for args in "" "--video"; do
  timeout 60 "$PY" benchmarks/bench_precision.py --device "$DEVICE" --repeats 7 --mixed $MIXED $args
  echo
done
