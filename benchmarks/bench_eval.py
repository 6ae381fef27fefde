"""``capsal-eval`` throughput and memory: captions per second and peak resident memory of the whole process, for a
checkpoint on its own synthetic test split, at two split sizes (memory must not grow with the split: it streams).

Each run is a fresh ``capsal-eval`` subprocess (``trainer=cpu`` unless ``--trainer``), so the peak RSS is that of one
evaluation; the split size is set with ``datamodule.num_test``.

    .venv/bin/python benchmarks/bench_eval.py --ckpt outputs/demo/image/checkpoints/last.ckpt \
        [--sizes 200 2000] [--explainers caption_guided,uniform,center,random] [--trainer cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(ckpt: str, dataset: str, size: int, explainers: str, trainer: str, out: Path) -> dict:
    """One capsal-eval in a child process; returns its counts, wall time and peak RSS (MiB)."""
    args = [
        f"ckpt_path={ckpt}",
        f"datamodule={dataset}",
        f"datamodule.num_test={size}",
        f"explainers=[{explainers}]",
        "caption_metrics=[bleu]",
        f"trainer={trainer}",
        "progress=false",
        f"output_dir={out}",
        f"hydra.run.dir={out}",
    ]
    code = (
        "import resource, sys; from capsal.cli.evaluate import main; sys.argv = ['capsal-eval', *sys.argv[1:]];\n"
        "try:\n    main()\nfinally:\n"
        "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    peak_kb = int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    results = json.loads((out / "results.json").read_text())
    return {"size": size, "captions": results["captions"], "seconds": seconds, "peak_mib": peak_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--dataset", default="shapes_image")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--explainers", default="caption_guided,uniform,center,random")
    parser.add_argument("--trainer", default="cpu")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in options.sizes:
            rows.append(
                run(options.ckpt, options.dataset, size, options.explainers, options.trainer, Path(tmp) / str(size))
            )
    print(f"{platform.machine()} CPU, {options.dataset}, explainers {options.explainers}, trainer={options.trainer}\n")
    print("| samples | captions | wall s | captions / s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        rate = row["captions"] / row["seconds"]
        print(f"| {row['size']} | {row['captions']} | {row['seconds']:.1f} | {rate:.1f} | {row['peak_mib']:.0f} |")
    if len(rows) > 1:
        ratio = rows[-1]["peak_mib"] / rows[0]["peak_mib"]
        print(f"\npeak RSS ratio {rows[-1]['size']} / {rows[0]['size']} samples: {ratio:.2f}")


if __name__ == "__main__":
    main()
