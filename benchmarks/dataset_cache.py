"""What `mpsl data cache` buys: decoding image files on every run against reading a memory-mapped cache.

Writes a Flickr30k-shaped folder (Karpathy JSON + JPEGs of photo size) with N images, then times
  1. decoding every sample into memory (what a run does without a cache),
  2. building the cache (`mpsl data cache`), once,
  3. opening the cache and reading random client mini-batches of B samples, as training does,
and reports the resident memory a partition of the cached set costs (none: views only hold indices).

    .venv/bin/python benchmarks/dataset_cache.py --images 400 --batch 32
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mpsl.config import DataConfig
from mpsl.data.catalog import build_cache, decode_in_memory, load_cache
from mpsl.data.sources import FILE_DATASETS


def write_flickr(root: Path, images: int, seed: int = 0) -> None:
    """Karpathy JSON + random 500x375 JPEGs (Flickr30k's typical size); 80 % train, 20 % test."""
    rng = np.random.default_rng(seed)
    (root / "flickr30k-images").mkdir(parents=True)
    entries = []
    for i in range(images):
        name = f"{1000000 + i}.jpg"
        pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "flickr30k-images" / name, quality=90)
        entries.append({"filename": name, "split": "test" if i % 5 == 0 else "train",
                        "sentences": [{"raw": f"a photo number {i} caption {k}"} for k in range(5)]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    ds = FILE_DATASETS["flickr30k"]
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "flickr", Path(tmp) / "cache"
        write_flickr(root, args.images)
        cfg = DataConfig(name="flickr30k", root=str(root), cache_dir=str(cache))

        t0 = time.perf_counter()
        decoded = decode_in_memory(ds, cfg, progress=False)
        decode_s = time.perf_counter() - t0
        n = len(decoded.train) + len(decoded.test)
        del decoded

        t0 = time.perf_counter()
        path = build_cache(ds, cfg, cache, progress=False)
        build_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in path.glob("*.npy")) / 1e6

        t0 = time.perf_counter()
        data = load_cache(ds, cfg, path)
        open_s = time.perf_counter() - t0
        rng = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            rows = torch.randint(0, len(data.train), (args.batch,), generator=rng)
            batch = data.train.subset(rows).inputs  # image [b, 3, 224, 224] normalized, captions [b, 5, 384]
        read_s = time.perf_counter() - t0
        assert batch["image"].shape == (args.batch, 3, 224, 224)

    read_rate = args.batches * args.batch / read_s
    print(f"| samples | decode into memory | build cache | cache size | open cache | read batches of {args.batch} |")
    print("|---|---|---|---|---|---|")
    print(f"| {n} | {decode_s:.1f} s ({n / decode_s:.0f} samples/s) | {build_s:.1f} s | {size_mb:.0f} MB | "
          f"{open_s * 1e3:.0f} ms | {read_rate:.0f} samples/s |")
    print(f"peak resident memory of this process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
