"""ImageNet-150 input pipeline: images/s of the serial per-image decode (what training did before) against
batches sliced from the decoded uint8 cache, and the one-time parallel cache build.

    python benchmarks/bench_data.py [--images 300] [--repeats 3]

Synthetic JPEGs of ImageNet's typical size (500x375, smooth content plus noise, quality 90). Each rate is
the best of `repeats` interleaved runs. Serial path: PIL open + torchvision Resize(128) + CenterCrop(128)
+ ToTensor per image, one process (the old ImageFolder __getitem__). Cache: ImageTensorDataset.batch of
256 random indices from the memory-mapped cache (page cache warm), to float in [0,1].
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib import data, imagecache  # noqa: E402
from lib.results import environment  # noqa: E402


def make_jpegs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        low = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((500, 375), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        files.append(folder / f"{i}.JPEG")
        Image.fromarray(img).save(files[-1], quality=90)
    return files


def serial(files: list[Path]) -> float:
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(128), transforms.CenterCrop(128), transforms.ToTensor()])
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            tf(im.convert("RGB"))
    return len(files) / (time.perf_counter() - t0)


def build(files: list[Path], folder: Path, workers: int) -> float:
    for old in folder.glob("bench-*.npy"):
        old.unlink()
    t0 = time.perf_counter()
    imagecache.build(files, 128, folder / "bench", workers=workers, progress=False)
    return len(files) / (time.perf_counter() - t0)


def cached(files: list[Path], folder: Path, batches: int = 20) -> float:
    store = imagecache.build(files, 128, folder / "bench", progress=False)
    ds = data.ImageTensorDataset(torch.from_numpy(store), torch.zeros(len(files), dtype=torch.long), ["x"])
    gen = torch.Generator().manual_seed(0)
    ds.batch(torch.arange(min(256, len(ds))))  # warm the page cache
    t0 = time.perf_counter()
    for _ in range(batches):
        ds.batch(torch.randint(0, len(ds), (256,), generator=gen))
    return batches * 256 / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="cache build processes (default: all cores)")
    a = p.parse_args(argv)
    rates = {"serial_decode": [], "cache_build_parallel": [], "cache_batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_jpegs(Path(tmp), a.images)
        for _ in range(a.repeats):  # interleaved
            rates["serial_decode"].append(serial(files))
            rates["cache_build_parallel"].append(build(files, Path(tmp) / "cache", a.workers))
            rates["cache_batches"].append(cached(files, Path(tmp) / "cache"))
    best = {k: max(v) for k, v in rates.items()}
    res = {"images_per_second_best": best, "all": rates, "images": a.images, "repeats": a.repeats,
           "speedup_cache_vs_serial": best["cache_batches"] / best["serial_decode"],
           "environment": environment("cpu")}
    out = ROOT / "benchmarks" / "results" / "data-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: round(v) for k, v in best.items()}), f"cache/serial = {res['speedup_cache_vs_serial']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
