"""Benchmark: stage 2 image parameters on N synthetic 1024x768 JPEGs (quality 90).

Baseline: the original's approach without pyvips, one file after another: np.array(Image.open(f)).shape (a
full decode), md5 in 4096-byte reads, os.path.getsize. Ours: scan_images with the default workers (header
only, 1 MiB reads, all cores). Both run on a warm page cache (every file is read once before timing), and
must agree on every width, height, channel, size and md5. Ratio = baseline time / our time. Target: at least 10x.
Also timed, to show where the time goes: ours on one worker, md5 alone, headers alone, decoding alone.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine_info, write_result  # noqa: E402
from oid_retinanet.data.image_params import list_images, scan_images  # noqa: E402

WIDTH, HEIGHT = 1024, 768


def make_image(args: tuple[Path, int, int]) -> None:
    """One photo-like JPEG: a colour gradient, a few shapes, noise of varying strength; seeded by index."""
    path, index, quality = args
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / (WIDTH + HEIGHT)
    lo, hi = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = lo + (hi - lo) * ramp[..., None]
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 12)):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        w, h = rng.integers(20, 400, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(3, 12), (HEIGHT, WIDTH, 3))
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)


def ensure_images(folder: Path, n: int, quality: int = 90) -> list[Path]:
    """img_00000.jpg ... for the first n indices, generated once (in parallel) and reused; others removed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:05d}.jpg" for i in range(n)]
    missing = [(p, i, quality) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"generating {len(missing)} images in {folder} ...", flush=True)
        with multiprocessing.Pool() as pool:
            pool.map(make_image, missing, chunksize=8)
    keep = {p.name for p in paths}
    for extra in folder.iterdir():
        if extra.name not in keep:
            extra.unlink()
    return paths


def baseline(paths: list[Path]) -> dict[str, tuple]:
    """The original's loop (its PIL path): full decode for the shape, md5 in 4 KiB reads, getsize."""
    out = {}
    for f in paths:
        h, w, c = np.array(Image.open(f)).shape
        digest = hashlib.md5()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(4096), b""):
                digest.update(chunk)
        out[os.path.basename(f)[:-4]] = (w, h, c, os.path.getsize(f), digest.hexdigest())
    return out


def ours(folder: Path, csv_path: Path, workers: int | None) -> dict[str, tuple]:
    """scan_images from scratch (any earlier CSV or .partial removed first); id -> (w, h, channel, size, md5)."""
    for stale in csv_path.parent.glob(csv_path.name + "*"):
        stale.unlink()
    scan_images(folder, csv_path, workers=workers, progress=False)
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5]) for r in rows}


def timed(func, *args):
    t = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - t, result


def md5_only(paths: list[Path]) -> None:
    for f in paths:
        with open(f, "rb") as fh:
            hashlib.md5(fh.read()).hexdigest()


def headers_only(paths: list[Path]) -> None:
    for f in paths:
        with Image.open(f) as img:
            img.size, img.mode


def decode_only(paths: list[Path]) -> None:
    for f in paths:
        np.array(Image.open(f))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="number of images (default: %(default)s)")
    p.add_argument("--out-dir", default="bench_output", help="where images and results go (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="our workers (default: os.cpu_count())")
    args = p.parse_args(argv)

    out_dir = Path(args.out_dir)
    folder = out_dir / "image_params_images"
    paths = ensure_images(folder, args.n)
    assert [folder / r for r in list_images(folder)] == paths
    total_bytes = sum(f.stat().st_size for f in paths)
    md5_only(paths)  # warm the page cache so both sides read from memory

    t_base, dims_base = timed(baseline, paths)
    csv_path = out_dir / "image_params_csv" / "bench_image_params.csv"
    t_ours, dims_ours = timed(ours, folder, csv_path, args.workers)
    t_ours1, dims_ours1 = timed(ours, folder, csv_path, 1)
    if dims_ours != dims_base or dims_ours1 != dims_base:
        bad = [k for k in dims_base if dims_ours.get(k) != dims_base[k]][:3]
        print(f"MISMATCH with the baseline's rows, e.g. {bad}", file=sys.stderr)
        return 1
    t_md5, _ = timed(md5_only, paths)
    t_head, _ = timed(headers_only, paths)
    t_decode, _ = timed(decode_only, paths)

    workers = args.workers or os.cpu_count()
    ratio, ratio1 = t_base / t_ours, t_base / t_ours1
    mb = total_bytes / 1e6
    print(f"{args.n} JPEGs {WIDTH}x{HEIGHT} q90, {mb:.0f} MB ({mb / args.n * 1000:.0f} KB each); warm cache")
    print(f"{'':34s}{'seconds':>9s}{'ms/image':>10s}")
    for name, t in [("baseline (full decode + md5, 1 core)", t_base), (f"ours ({workers} workers)", t_ours),
                    ("ours (1 worker)", t_ours1), ("  md5 alone, 1 core", t_md5),
                    ("  headers alone, 1 core", t_head), ("  full decode alone, 1 core", t_decode)]:
        print(f"{name:34s}{t:9.2f}{t / args.n * 1000:10.2f}")
    print(f"width, height, channel, size and md5 identical for all {args.n} images")
    print(f"image params: {ratio:.1f}x faster than full decode ({ratio1:.1f}x on one worker; target >= 10x)")
    path = write_result(str(out_dir), "bench_image_params", {
        "n_images": args.n, "image_size": f"{WIDTH}x{HEIGHT}", "jpeg_quality": 90, "total_bytes": total_bytes,
        "baseline_seconds": t_base, "ours_seconds": t_ours, "ours_workers": workers,
        "ours_one_worker_seconds": t_ours1, "md5_only_seconds": t_md5, "headers_only_seconds": t_head,
        "decode_only_seconds": t_decode, "ratio_baseline_over_ours": ratio, "speedup": ratio,
        "ratio_baseline_over_ours_one_worker": ratio1, "target": ">= 10", "machine": machine_info()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
