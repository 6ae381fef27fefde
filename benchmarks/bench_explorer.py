"""Size and opening time of ``capsal-eval``'s explorer for 50 Flickr30k-sized images.

50 images of 500 x 375 px, each a smooth colour gradient (a random direction and pair of colours) with a few
soft-edged blobs and per-pixel Gaussian noise (sigma 12 grey levels), so their JPEGs weigh what photos do (no
flat colour that JPEG squeezes to nothing); 3 explainers, 4 phrases per image with a box each, maps on a 14 x 14
grid. The page is written by :func:`capsal.explorer.write_pages` (the writer ``capsal-eval`` calls), then opened
twice in headless Chromium (network off, a fresh browser each time): the time is the page's own
``performance.now()`` when the first sample is drawn, i.e. from the start of navigation to the first draw.

    .venv/bin/python benchmarks/bench_explorer.py [--samples 50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from capsal.explorer import SAMPLES_PER_PAGE, ExplorerMaps, ExplorerSample, write_pages

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from devtools import DevTools  # the tests' DevTools client

WIDTH, HEIGHT, GRID, PHRASES = 500, 375, (14, 14), 4
EXPLAINERS = ("caption_guided", "gradcam", "center")


def photo(rng: np.random.Generator) -> np.ndarray:
    """A gradient between two random colours, three soft blobs and Gaussian noise: uint8 (1, H, W, 3)."""
    ys, xs = np.mgrid[:HEIGHT, :WIDTH] / max(HEIGHT, WIDTH)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys)[..., None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    image = (1 - ramp) * rng.uniform(0, 255, 3) + ramp * rng.uniform(0, 255, 3)
    for _ in range(3):
        cx, cy, radius = rng.uniform(0, WIDTH / HEIGHT), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        weight = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))[..., None]
        image = (1 - weight) * image + weight * rng.uniform(0, 255, 3)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)[None]


def samples(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(count):
        maps = {name: ExplorerMaps(rng.uniform(0, 1, (PHRASES, 1, *GRID))) for name in EXPLAINERS}
        boxes = []
        for _ in range(PHRASES):
            x0, y0 = int(rng.integers(0, WIDTH // 2)), int(rng.integers(0, HEIGHT // 2))
            boxes.append([(x0, y0, x0 + int(rng.integers(40, WIDTH // 2)), y0 + int(rng.integers(40, HEIGHT // 2)))])
        yield ExplorerSample(
            photo(rng),
            [f"phrase {j}" for j in range(PHRASES)],
            maps,
            boxes,
            sample_id=f"image/{k:05d}",
            captions=["a caption of about a dozen words describing what the picture shows"],
            categories=[["people", "clothing", "scene", "animals"][j] for j in range(PHRASES)],
            hits={name: [bool(rng.integers(2)) for _ in range(PHRASES)] for name in EXPLAINERS},
            mass={name: [float(rng.uniform()) for _ in range(PHRASES)] for name in EXPLAINERS},
        )


def open_time(chromium: str, page: Path, profile: Path) -> float:
    browser = DevTools(chromium, profile)
    try:
        browser.open(page)
        assert browser.requests() == [page.as_uri()] and not browser.errors()
        return float(browser.evaluate("capsal.readyMs")) / 1000
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (make chromium)")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        pages = write_pages(folder, samples(args.samples), args.samples)
        written = time.perf_counter() - start
        size = pages[0].stat().st_size / 1e6
        times = [open_time(chromium, pages[0], Path(folder) / f"profile-{k}") for k in range(args.repeats)]
    header = f"| samples (per page: {SAMPLES_PER_PAGE}) | pages | first page's size | written in | opened in |"
    print(header)
    print("|---|---|---|---|---|")
    opened = ", ".join(f"{t:.2f} s" for t in times)
    print(f"| {args.samples} | {len(pages)} | {size:.2f} MB | {written:.1f} s | {opened} |")


if __name__ == "__main__":
    main()
