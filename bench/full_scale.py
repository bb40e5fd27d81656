"""`make bench-scale`: every stage at Open Images' real counts on this machine, against a baseline in the same run.

Generates the synthetic full-size set (`oid_retinanet.demo.full_size`: the v4 and 2019 challenge box files,
14.6 M and 12.2 M rows on 1,743,042 images, validation 41,620 images), runs each stage's real script on it in its
own process (wall time, peak RSS, disk written) and the baseline the issue names beside it, then writes the "Full
scale" section of BENCHMARKS.md and bench_output/full_scale.json. Not part of `make bench` (about an hour on 2
cores); `--fraction 0.01` runs the same at 1% for a quick look (printed only). The generated data is removed at the end
(`--keep` keeps it; a kept set of the same size and generator is reused).

Stages: stage1 (2018 levels 1-5 + low samples; the 2019 levels 1-7, against pandas reading and writing as many
rows), stage2 (20 k and 200 k files, a run killed half way), stage3 (the training generator's index and one epoch's
draw; its images/s on one core from real-size JPEGs), stage4 (--from-cache on 3 models' caches of the test set, a
resumed run's listing, the CSV writing against pandas), stage5 (stage 5 and the 2019 helpers at a tenth of the test
set and all of it), stage6 (avg and wbf from the caches and from the CSVs), metric (the official mAP on the
validation set). `--stages` measures some of them; at full size their rows replace those in the report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import describe_machine, generated, machine_info, replace_section, write_result  # noqa: E402

SECTION = "## Full scale"


def make_dataset(root: Path, fraction: float) -> dict:
    """The full-size box files under `root`, laid out as stage 1 reads them; returns their row counts."""
    from oid_retinanet.demo import full_size as fs

    return fs.write_dataset(root, fraction, progress=True)


def train_folder(work: Path, data: Path) -> Path:
    """The train image folder of the box files' 1,743,042 images, as empty files (the stages that list it read
    no pixels), flat as the 2019 tools read it; made once."""
    import pandas as pd

    folder = work / "train_images"

    def make(folder: Path, ids_csv: Path) -> int:
        ids = pd.read_csv(ids_csv, usecols=["ImageID"], dtype=str)["ImageID"].unique()
        folder.mkdir(parents=True, exist_ok=True)
        for image_id in ids.tolist():
            open(folder / f"{image_id}.jpg", "wb").close()
        return len(ids)

    t = time.perf_counter()
    n = generated(work / "train.stamp.json", make, folder, data / "annotations" / "train-annotations-bbox.csv")
    print(f"the train folder: {n:,} empty image files ({time.perf_counter() - t:.0f} s)", flush=True)
    return folder


def cells(stage: str, input: str, result: str, bounds: str, baseline: str = "", ratio: float | None = None) -> dict:
    """A row of the report, made where the stage is measured: what ran, on what, what it took, the same-run
    baseline and the ratio to it, the issue's bounds."""
    return {"table": [stage, input, result, baseline, "" if ratio is None else f"**{ratio:.2f}x**", bounds]}


def gb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB"


def _tree_pss_mb(pid: int) -> float:
    """Memory of a process and all its descendants now, in MB: the sum of their proportional set sizes (a page
    shared by forked workers counts once over them, not once in each: /proc/PID/smaps_rollup)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


# Runs a command as its child and writes the child's peak RSS (KB) to a file. The kernel starts a new process's
# ru_maxrss at its parent's resident size when it forked: from this small launcher, not from the benchmark's
# process, which holds the generated tables.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(argv: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS (MB) of one process running `argv` (its output in `log`): `peak_rss_mb` its
    main process's (exact, from the kernel), `peak_tree_mb` the sum of the proportional set sizes of it and its
    worker processes (sampled every 0.2 s)."""
    import threading

    rss_file = log.with_suffix(".maxrss")
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(rss_file), *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_pss_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {code}): see {log}")
    peak_kb = int(rss_file.read_text())
    rss_file.unlink()
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "peak_tree_mb": peak[0]}


def peak(run: dict) -> float:
    """A run's peak memory: its largest process's (exact) or the sum over its processes (PSS, sampled), the
    larger."""
    return max(run["peak_rss_mb"], run["peak_tree_mb"])


def csv_rows(paths: list[Path]) -> int:
    """Data rows of CSV files (lines less the header; the files here hold no quoted line breaks)."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b"")) - 1
    return total


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def pandas_io(inputs: list[str], rows: int, out: str) -> None:
    """The baseline of a table stage: a bare pandas read of its inputs and a write of as many rows as it wrote."""
    import pandas as pd

    frames = [pd.read_csv(path) for path in inputs]
    df = pd.concat(frames, ignore_index=True)
    reps = -(-rows // len(df))
    big = pd.concat([df] * reps, ignore_index=True) if reps > 1 else df
    big.iloc[:rows].to_csv(out, index=False)


def baseline(work: Path, name: str, inputs: list[Path], rows: int) -> dict:
    out = work / f"{name}.baseline.csv"
    result = measure([sys.executable, __file__, "--phase", "pandas_io", str(out), str(rows), *map(str, inputs)],
                     work / f"{name}.baseline.log")
    out.unlink()
    return result


def table_stage(work: Path, name: str, what: str, argv: list[str], inputs: list[Path], outputs: Path | list[Path],
                bounds: str = "peak RSS <= 8 GB, time <= 2x") -> dict:
    """A stage that reads box CSVs and writes CSVs (`outputs`: a folder it writes, emptied first, or the files it
    writes), against pandas reading the same and writing as many rows."""
    if isinstance(outputs, Path):
        shutil.rmtree(outputs, ignore_errors=True)
    print(f"{name}: {what}", flush=True)
    ours = measure([sys.executable, *argv], work / f"{name}.log")
    written = sorted(outputs.rglob("*.csv")) if isinstance(outputs, Path) else outputs
    rows_in, rows_out = csv_rows(inputs), csv_rows(written)
    base = baseline(work, name, inputs, rows_out)
    disk = sum(p.stat().st_size for p in written) / 1e6
    row = {"stage": name, "rows_in": rows_in, "rows_out": rows_out, "ours": ours, "baseline": base, "disk_mb": disk,
           "ratio": ours["seconds"] / base["seconds"]}
    row.update(cells(f"{name}: {what}", f"{rows_in:,} rows", f"{ours['seconds']:.0f} s, {gb(peak(ours))}, "
                     f"{gb(disk)} ({rows_out:,} rows)", bounds, f"pandas read + write as many rows: "
                     f"{base['seconds']:.0f} s, {gb(peak(base))}", row["ratio"]))
    print(f"  {ours['seconds']:.0f} s, peak {peak(ours):.0f} MB; pandas read + write: "
          f"{base['seconds']:.0f} s, peak {peak(base):.0f} MB: {row['ratio']:.2f}x", flush=True)
    return row


def stage1(work: Path, data: Path) -> list[dict]:
    """The 2018 levels (v4 files) and the 2019 levels (the 2019 train file), then the 2019 exists split of every
    level against the train folder and the too-much selection of level 6."""
    from oid_retinanet.oid.levels import level_file

    out = work / "output"
    train = data / "challenge-2019-train-detection-bbox.csv"
    inputs = [data / "annotations" / f"{s}-annotations-bbox.csv" for s in ("train", "validation")] + [
        data / f"challenge-2019-{s}-detection-bbox.csv" for s in ("train", "validation")]
    rows = [table_stage(work, "stage 1 (2018)", "levels 1-5 + low samples", [
        "create_files_for_training_by_levels.py", "--dataset-path", f"{data}/", "--output-path", f"{out}/",
        "--low-samples"], inputs, out)]
    out2019 = work / "output_2019"
    rows.append(table_stage(work, "stage 1 (2019)", "levels 1-7 from the 2019 train file", [
        "labelProcess/create_files_for_training_by_levels.py", "--train-csv", str(train), "--output-path",
        f"{out2019}/"], [train], out2019))
    images = train_folder(work, data)
    levels = [Path(level_file(str(out2019), str(k), "train")) for k in range(1, 8)]
    exists = [p.with_name(p.name.replace("train-", f"{s}-exists-")) for p in levels for s in ("val", "train")]
    rows.append(table_stage(work, "gen_exists_annotation", "levels 1-7 split against the train folder", [
        "labelProcess/gen_exists_annotation.py", "--images", str(images), "--output-path", f"{out2019}/"], levels,
        exists))
    level6 = Path(level_file(str(out2019), "6", "train"))
    selected_in = level6.with_name(level6.name.replace("train-", "train-exists-"))
    rows.append(table_stage(work, "tooMuch_label_select", "level 6's too-much selection", [
        "labelProcess/tooMuch_label_select.py", "--level", "6", "--output-path", f"{out2019}/"], [selected_in],
        [selected_in.with_name(selected_in.stem + "-select.csv")]))
    return rows


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Until `path` has `n` lines (or `proc` ends)."""
    while proc.poll() is None:
        if path.exists() and csv_rows([path]) >= n:
            return
        time.sleep(0.2)


REAL_SIZE_FILES = 2000  # stage 2 over Open Images-sized JPEGs


def stage2(work: Path, fraction: float) -> list[dict]:
    """Image parameters over 20 k and 200 k small JPEGs: the time per file and the memory stay flat; a run killed
    half way and rerun writes the same CSV."""
    import numpy as np

    from oid_retinanet.demo import full_size as fs

    sizes = [max(200, round(n * fraction)) for n in (20_000, 200_000)]
    out = work / "stage2"
    runs = {}
    for n in sizes:
        folder = work / f"images_{n}"
        fs.write_images(str(folder), fs.image_ids(n, np.random.default_rng(n)))
        argv = [sys.executable, "retinanet_training_level_1/find_image_parameters.py", "--images", str(folder),
                "--subset", f"s{n}", "--output-path", str(out)]
        print(f"stage 2: {n:,} files", flush=True)
        runs[n] = {**measure(argv, work / f"stage2_{n}.log"), "argv": argv}
        print(f"  {runs[n]['seconds']:.1f} s ({1000 * runs[n]['seconds'] / n:.3f} ms a file), peak "
              f"{peak(runs[n]):.0f} MB", flush=True)
    small, large = sizes
    # killed half way (SIGKILL), then run again: the same bytes as the uninterrupted run
    argv = [*runs[large]["argv"][:-1], str(out / "killed")]
    csv_name = f"s{large}_image_params.csv"
    with open(work / "stage2_killed.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for_lines(out / "killed" / (csv_name + ".partial"), large // 2, proc)
        proc.kill()
        proc.wait()
    measure(argv, work / "stage2_resumed.log")
    same = (out / "killed" / csv_name).read_bytes() == (out / csv_name).read_bytes()
    per_file = {n: runs[n]["seconds"] / n for n in sizes}
    row = {"stage": "stage 2", "files": sizes, "seconds": {str(n): runs[n]["seconds"] for n in sizes},
           "peak_rss_mb": {str(n): peak(runs[n]) for n in sizes},
           "per_file_ratio": per_file[large] / per_file[small], "memory_ratio": peak(runs[large]) / peak(runs[small]),
           "projected_seconds": per_file[large] * fs.V4_TRAIN.images, "killed_and_resumed_same_bytes": same}
    print(f"  per file {row['per_file_ratio']:.2f}x from {small:,} to {large:,} files; killed at half way and "
          f"rerun: {'the same' if same else 'OTHER'} bytes", flush=True)
    # Open Images' own files: about 190 KB each, every byte hashed (md5); read from the page cache here, so the
    # CPU's share: a disk reading R MB/s adds 0.19 / R s a file
    photos = work / "photos_stage2"
    n = max(100, round(REAL_SIZE_FILES * fraction))
    fs.write_photos(str(photos), n, seed=2)
    real = measure([sys.executable, "retinanet_training_level_1/find_image_parameters.py", "--images", str(photos),
                    "--subset", "photos", "--output-path", str(out)], work / "stage2_photos.log")
    row.update(real_size_files=n, real_size_seconds=real["seconds"],
               real_size_projected_seconds=real["seconds"] / n * fs.V4_TRAIN.images)
    row.update(cells(
        "stage 2: image parameters (2 workers)", f"{small:,} and {large:,} small JPEGs; {n:,} JPEGs of ~190 KB",
        f"{runs[small]['seconds']:.1f} s, {peak(runs[small]):.0f} MB; {runs[large]['seconds']:.1f} s, "
        f"{peak(runs[large]):.0f} MB (memory {row['memory_ratio']:.2f}x); projected for {fs.V4_TRAIN.images:,} files: "
        f"{row['projected_seconds'] / 60:.0f} min; the ~190 KB JPEGs (md5 of every byte, from the page cache): "
        f"{real['seconds']:.1f} s, projected {row['real_size_projected_seconds'] / 60:.0f} min plus the disk's "
        f"reading time; killed half way and rerun: {'same bytes' if same else 'DIFFERENT bytes'}",
        "time a file within 1.25x, memory flat, a killed run resumes to the same CSV",
        f"the {small:,}-file run (time a file)", row["per_file_ratio"]))
    print(f"  {n:,} real-size JPEGs: {real['seconds']:.1f} s ({1000 * real['seconds'] / n:.2f} ms a file)", flush=True)
    shutil.rmtree(photos)
    return [row]


DRAW_BATCHES = 100_000
TARGET_IMAGES_PER_S = 42  # torchvision's RetinaNet ResNet50 training in bf16 on one H100 (README)


def phase(name: str, *args: str) -> dict:
    """Run `name`'s phase function in a fresh process (its own peak RSS; no state of this one); its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--phase", name, *args], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{name} phase failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generator_phase(level_csv: str, classes_csv: str, params_csv: str, images_dir: str) -> dict:
    """In its own process: the training generator's index of a level file (`load_level_data` and the generator's
    per-class lists) and one epoch's draw of DRAW_BATCHES batches."""
    from bench.common import peak_rss_mb
    from oid_retinanet.data.datasets import load_level_data
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator

    t = time.perf_counter()
    data = load_level_data(level_csv, classes_csv, params_csv, images_dir)
    generator = OpenImagesGenerator(data, GeneratorConfig(batch_size=2, steps=DRAW_BATCHES))
    index = time.perf_counter() - t
    t = time.perf_counter()
    generator.start_epoch(1)
    draw = time.perf_counter() - t
    return {"images": len(data), "boxes": int(len(data.labels)), "index_seconds": index, "draw_seconds": draw,
            "batches": len(generator), "peak_rss_mb": peak_rss_mb()}


def stage3(work: Path) -> list[dict]:
    """The generator on the level-1 file stage 1 wrote from the v4 file (every image on disk, as empty files); its
    images/s on one core from real-size JPEGs."""
    import numpy as np
    import pandas as pd

    from oid_retinanet.demo import full_size as fs
    from oid_retinanet.oid.levels import level_class_file, level_file

    level_csv, classes_csv = level_file(str(work / "output"), "1", "train"), level_class_file(str(work / "output"), "1")
    if not os.path.exists(level_csv):
        raise SystemExit(f"stage3 reads the level-1 file stage1 writes ({level_csv}): run stage1 first (--keep)")
    ids = pd.read_csv(level_csv, usecols=["ImageID"], dtype=str)["ImageID"].unique()
    images = train_folder(work, work / "dataset")
    print(f"stage 3: the training generator's index of {len(ids):,} images", flush=True)
    rng = np.random.default_rng(0)
    width = rng.choice([1024, 768, 683], size=len(ids))
    params = pd.DataFrame({"id": ids, "width": width, "height": np.where(width == 1024, 768, 1024), "channel": 3,
                           "size": 200_000, "md5": "0" * 32})
    params_csv = work / "train_image_params.csv"
    params.to_csv(params_csv, index=False)
    result = phase("generator", level_csv, classes_csv, str(params_csv), str(images))
    print(f"  index {result['index_seconds']:.0f} s, peak {result['peak_rss_mb']:.0f} MB; a draw of "
          f"{result['batches']:,} batches {result['draw_seconds']:.2f} s", flush=True)
    photos = work / "photos"
    fs.write_photos(str(photos), SPEED_IMAGES)
    speed = phase("speed", str(photos))["images_per_s"]
    cores = {name: math.ceil(TARGET_IMAGES_PER_S / rate) for name, rate in speed.items()}
    print(f"  one core at {SPEED_SIDES[0]}x{SPEED_SIDES[1]}: " + ", ".join(
        f"{name} {rate:.1f} images/s ({cores[name]} cores for {TARGET_IMAGES_PER_S})" for name, rate in speed.items()),
        flush=True)
    rates = ", ".join(f"{name} {rate:.1f} images/s ({cores[name]} cores for {TARGET_IMAGES_PER_S}/s)"
                      for name, rate in speed.items())
    return [{"stage": "stage 3", **result, **cells(
                "stage 3: the training generator (`load_level_data`, per-class lists; level 1)",
                f"{result['images']:,} images, {result['boxes']:,} boxes",
                f"index {result['index_seconds']:.0f} s, {gb(result['peak_rss_mb'])}; one epoch's draw of "
                f"{result['batches']:,} batches of 2: {result['draw_seconds']:.2f} s",
                "index <= 60 s and <= 4 GB, a draw of 100,000 batches <= 5 s")},
            {"stage": "stage 3 speed", "images_per_s": speed, "cores_for_target": cores, **cells(
                "stage 3: the training generator on one core (decode, resize, augment, targets; batch 1)",
                f"{SPEED_IMAGES} JPEGs of 1024x768, ~190 KB, at {SPEED_SIDES[0]}/{SPEED_SIDES[1]}", rates,
                f"reported: cores to feed {TARGET_IMAGES_PER_S} images/s")}]


SPEED_IMAGES = 48  # real-size JPEGs the speed phase draws from
SPEED_SIDES = (768, 1024)


def speed_phase(folder: str) -> dict:
    """In its own process, on one core: the training generator's batches of one image (decode, resize, augment,
    anchor targets for ResNet50) at 768x1024 from the JPEGs in `folder`, with the default flip and with the full
    augmentation (`--random-transform --intensity-change`); images/s each."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np
    from PIL import Image

    from oid_retinanet.data.augment import RandomTransform
    from oid_retinanet.data.datasets import assemble
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator
    from oid_retinanet.model.backbones import feature_shapes_fn
    from oid_retinanet.oid.classes import ClassList
    from oid_retinanet.train.trainer import INTENSITY_CHANGE

    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    rng = np.random.default_rng(0)
    per_image = rng.integers(1, 15, len(paths))  # about the real mean of 7 boxes an image
    xy = rng.random((per_image.sum(), 2)) * 0.7
    boxes = np.hstack([xy, xy + rng.uniform(0.05, 0.3, xy.shape)])
    sizes = [Image.open(p).size for p in paths]  # the header only
    data = assemble(folder, ClassList(tuple(f"/m/{k}" for k in range(443)), tuple(map(str, range(443)))),
                    [Path(p).stem for p in paths], paths, [w for w, _ in sizes], [h for _, h in sizes],
                    np.repeat(np.arange(len(paths)), per_image), boxes, rng.integers(0, 443, len(boxes)))
    rates = {}
    for name, transform, intensity in (("flip", RandomTransform.FLIP_X, None),
                                       ("full", RandomTransform.ORIGINAL_FULL, INTENSITY_CHANGE)):
        generator = OpenImagesGenerator(data, GeneratorConfig(
            batch_size=1, min_side=SPEED_SIDES[0], max_side=SPEED_SIDES[1], transform=transform, intensity=intensity,
            feature_shapes=feature_shapes_fn("resnet50"), sampling="shuffle", steps=len(paths)))
        generator[0]  # warm
        t = time.perf_counter()
        for i in range(len(generator)):
            generator[i]
        rates[name] = len(generator) / (time.perf_counter() - t)
    return {"images_per_s": rates}


# ---- the test set: 3 models' caches (stage 4), their CSVs (stage 4 --from-cache), stages 5 and 6 ---------------
ENSEMBLE_MODELS = 3


def test_images(fraction: float) -> int:
    from oid_retinanet.demo import full_size as fs

    return max(200, round(fs.TEST_IMAGES * fraction))


def _write_test_caches(caches: Path, n: int) -> list[str]:
    """3 models' caches of `n` test images, written by 2 processes (about 5 minutes at full size)."""
    import multiprocessing

    import numpy as np

    from oid_retinanet.demo import full_size as fs

    parts = np.array_split(fs.image_ids(n, np.random.default_rng(6)), 2)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return pool.starmap(fs.write_caches, [(str(caches), len(part), ENSEMBLE_MODELS, 10 + k, fs.CACHE_CLASSES,
                                               part) for k, part in enumerate(parts)])[0]


def test_set(work: Path, fraction: float) -> tuple[list[str], Path]:
    """The caches of the test set (made once; kept with --keep) and the level-1 class list their labels index."""
    from oid_retinanet.oid.classes import read_class_descriptions, write_class_descriptions
    from oid_retinanet.oid.levels import levels_2018
    from oid_retinanet.resources import resource_path

    labels = work / "labels_level_1.csv"
    level1 = levels_2018(read_class_descriptions(resource_path("class-descriptions-boxable.csv")))["1"]
    write_class_descriptions(str(labels), level1.classes)
    n = test_images(fraction)
    t = time.perf_counter()
    dirs = generated(work / "caches.stamp.json", _write_test_caches, work / "caches", n)
    print(f"the test set's caches: {n:,} images x {ENSEMBLE_MODELS} models ({time.perf_counter() - t:.0f} s, "
          f"{disk_mb(work / 'caches') / 1024:.1f} GB)", flush=True)
    return dirs, labels


def from_cache_argv(cache_dir: str, labels: Path, out: Path) -> list[str]:
    return [sys.executable, "retinanet_inference_example.py", "--from-cache", "--cache-dir", cache_dir, "--labels",
            str(labels), "--output", str(out)]


def model_csvs(work: Path, dirs: list[str], labels: Path) -> list[Path]:
    """Each model's CSV of the test set (`dirs`, `labels`: test_set's) by stage 4 --from-cache, written unless there
    from stage 4 of this run."""
    csvs = [work / f"model_{m}.csv" for m in range(ENSEMBLE_MODELS)]
    for d, out in zip(dirs, csvs):
        if not out.exists():
            subprocess.run(from_cache_argv(d, labels, out), check=True, cwd=REPO, capture_output=True)
    return csvs


def listing_phase(images: str, cache_dir: str) -> dict:
    """A resumed stage 4's listing: the test images, less those with a finished cache file."""
    from oid_retinanet.predict.inference import list_images, uncached

    t = time.perf_counter()
    paths = list_images(images)
    todo = uncached(paths, cache_dir)
    return {"images": len(paths), "todo": len(todo), "seconds": time.perf_counter() - t}


def writing_phase(csv_path: str, ours: str, theirs: str) -> dict:
    """Stage 4's CSV writing (`format_rows` on the merged rows, as --from-cache writes them) against pandas
    formatting and writing the same rows (`str.format` per value, a groupby join, `to_csv`): the rows parsed
    back from the stage's CSV; both outputs must be that CSV's bytes."""
    import numpy as np
    import pandas as pd

    from oid_retinanet.oid.predictions import HEADER, iter_predictions
    from oid_retinanet.predict.ensemble import BATCH_IMAGES, DECIMALS, format_rows

    ids, counts, mids, numbers = [], [], [], []
    for row in iter_predictions(csv_path):
        ids.append(row.image_id)
        counts.append(len(row.mids))
        mids.append(np.asarray(row.mids, dtype=object))
        numbers.append(np.column_stack([row.scores, row.boxes]))
    mids, numbers = np.concatenate(mids), np.concatenate(numbers)
    image = np.repeat(np.arange(len(ids)), counts)
    classes, label = np.unique(mids, return_inverse=True)
    rows = np.column_stack([label, numbers])
    score_decimals, coord_decimals = DECIMALS["mirror"]
    t = time.perf_counter()
    with open(ours, "wb") as f:
        f.write((",".join(HEADER) + "\n").encode())
        bounds = np.searchsorted(image, np.arange(0, len(ids) + BATCH_IMAGES, BATCH_IMAGES))
        for k, a in enumerate(range(0, len(ids), BATCH_IMAGES)):
            lo, hi = bounds[k], bounds[k + 1]
            f.write(format_rows(ids[a:a + BATCH_IMAGES], image[lo:hi] - a, rows[lo:hi], classes, score_decimals,
                                coord_decimals))
    ours_seconds = time.perf_counter() - t
    t = time.perf_counter()
    df = pd.DataFrame({"image": image, "mid": mids, **{c: numbers[:, k] for k, c in
                                                        enumerate(("score", "x1", "y1", "x2", "y2"))}})
    token = df["mid"] + " " + df["score"].map(f"{{:.{score_decimals}f}}".format)
    for c in ("x1", "y1", "x2", "y2"):
        token += " " + df[c].map(f"{{:.{coord_decimals}f}}".format)
    strings = (token + " ").groupby(df["image"], sort=False).agg("".join).reindex(range(len(ids)), fill_value="")
    pd.DataFrame({"ImageId": ids, "PredictionString": strings.to_numpy()}).to_csv(theirs, index=False)
    pandas_seconds = time.perf_counter() - t
    expected = Path(csv_path).read_bytes()
    return {"images": len(ids), "boxes": len(rows), "ours_seconds": ours_seconds, "pandas_seconds": pandas_seconds,
            "same_bytes": Path(ours).read_bytes() == expected and Path(theirs).read_bytes() == expected}


def stage4(work: Path, fraction: float) -> list[dict]:
    """--from-cache on each model's cache; a resumed run's listing; the CSV writing against pandas."""
    from oid_retinanet.predict.cache import cache_ids

    dirs, labels = test_set(work, fraction)
    runs = []
    for m, d in enumerate(dirs):
        out = work / f"model_{m}.csv"
        runs.append(measure(from_cache_argv(d, labels, out), work / f"{out.stem}.log"))
        print(f"stage 4 --from-cache {out.name}: {runs[-1]['seconds']:.0f} s, peak {peak(runs[-1]):.0f} MB",
              flush=True)
    images = work / "test"
    images.mkdir(exist_ok=True)
    for image_id in cache_ids(dirs[0]):  # empty files: the listing reads no pixels
        open(images / f"{image_id}.jpg", "wb").close()
    listing = phase("listing", str(images), dirs[0])
    writing = phase("writing", str(work / "model_0.csv"), str(work / "w_ours.csv"), str(work / "w_pandas.csv"))
    for name in ("w_ours.csv", "w_pandas.csv"):
        (work / name).unlink()
    print(f"  listing for resume: {listing['images']:,} images, {listing['todo']} to do, {listing['seconds']:.2f} s; "
          f"writing {writing['boxes']:,} boxes: {writing['ours_seconds']:.1f} s, pandas "
          f"{writing['pandas_seconds']:.1f} s", flush=True)
    slowest = max(runs, key=lambda r: r["seconds"])
    n = listing["images"]
    ratio = writing["ours_seconds"] / writing["pandas_seconds"]
    return [{"stage": "stage 4", "ours": slowest, **cells(
                "stage 4: --from-cache, one model's cache to its CSV (the slowest of 3)", f"{n:,} images",
                f"{slowest['seconds']:.0f} s, {gb(max(map(peak, runs)))}",
                "reported")},
            {"stage": "stage 4 listing", **listing, **cells(
                "stage 4: a resumed run's listing (every image cached)", f"{n:,} images",
                f"{listing['seconds']:.2f} s ({listing['todo']} to do)", "<= 5 s")},
            {"stage": "stage 4 writing", **writing, "ratio": ratio, **cells(
                "stage 4: --from-cache's CSV writing", f"{n:,} images, {writing['boxes']:,} boxes",
                f"{writing['ours_seconds']:.1f} s{'' if writing['same_bytes'] else ' (OTHER bytes)'}", "<= 2x pandas",
                f"pandas formatting and writing the same CSV: {writing['pandas_seconds']:.1f} s", ratio)}]


def csv_io_phase(reference: str, out: str, *inputs: str) -> dict:
    """Bare CSV I/O of a stage: pandas reading its inputs and writing its output's rows (read beforehand)."""
    import pandas as pd

    table = pd.read_csv(reference, dtype=str, keep_default_na=False)
    t = time.perf_counter()
    for path in inputs:
        pd.read_csv(path, dtype=str, keep_default_na=False)
    table.to_csv(out, index=False)
    return {"seconds": time.perf_counter() - t}


def head(src: Path, dst: Path, rows: int) -> Path:
    with open(src, "rb") as f, open(dst, "wb") as g:
        for _ in range(rows + 1):
            g.write(f.readline())
    return dst


def stage5(work: Path, fraction: float) -> list[dict]:
    """Stage 5 (2018 and 2019) and the 2019 submission helpers on a tenth of the test set and on all of it: peak RSS
    at both sizes; stage 5 against pandas reading its input and writing its output."""
    from oid_retinanet.resources import resource_path

    csvs = model_csvs(work, *test_set(work, fraction))
    n = test_images(fraction)
    folder = work / "stage5"
    rows = []
    hierarchy = ["--class-descriptions", resource_path("challenge-2018-class-descriptions-500.csv"), "--hierarchy",
                 resource_path("bbox_labels_600_hierarchy.json"), "--hierarchy-names",
                 resource_path("class-descriptions-boxable.csv")]
    sub = "retinanet_inference_submission"
    tools = [  # (name, argv of the files dict f, output key, input keys)
        ("stage 5", lambda f: ["create_higher_level_predictions_from_level_1_predictions_csv.py", f["m0"], f["all18"]],
         "all18", ["m0"]),
        ("stage 5 (2019)", lambda f: [f"{sub}/create_higher_level_predctions.py", f["m0"], f["all"], *hierarchy],
         "all", ["m0"]),
        ("split_csv", lambda f: [f"{sub}/split_csv.py", f["all"], "--output-dir", f["parts"]], None, ["all"]),
        ("final_prediction_ensemble ensemble",
         lambda f: [f"{sub}/final_prediction_ensemble.py", "ensemble", f["m0"], f["m1"], "-o", f["ens"]], "ens",
         ["m0", "m1"]),
        ("final_prediction_ensemble combine", lambda f: [f"{sub}/final_prediction_ensemble.py", "combine",
                                                          *sorted(map(str, Path(f["parts"]).glob("*.csv"))), "-o",
                                                          f["comb"]], "comb", ["all"]),
        ("final_prediction_ensemble delete-low-scores",
         lambda f: [f"{sub}/final_prediction_ensemble.py", "delete-low-scores", f["comb"], "--thr", "0.02", "-o",
                    f["del"]], "del", ["comb"]),
        ("concat_all_levels_submission", lambda f: [f"{sub}/concat_all_levels_submission.py", f["m0"], f["m1"], "-o",
                                                    f["concat"]], "concat", ["m0", "m1"]),
    ]
    sizes = (max(100, n // 10), n)
    runs: dict[str, dict[int, dict]] = {name: {} for name, *_ in tools}
    files_by_size = {}
    for size in sizes:
        d = folder / str(size)
        d.mkdir(parents=True, exist_ok=True)
        f = {key: str(d / f"{key}.csv") for key in ("all18", "all", "ens", "comb", "del", "concat")}
        f.update(m0=str(head(csvs[0], d / "m0.csv", size)), m1=str(head(csvs[1], d / "m1.csv", size)),
                 parts=str(d / "parts"))
        files_by_size[size] = f
        for name, argv, _, _ in tools:
            runs[name][size] = measure([sys.executable, *map(str, argv(f))], d / f"{name.replace(' ', '_')}.log")
            print(f"{name}, {size:,} images: {runs[name][size]['seconds']:.1f} s, peak "
                  f"{peak(runs[name][size]):.0f} MB", flush=True)
    small, large = sizes
    for name, _, out, inputs in tools:
        r = runs[name]
        row = {"stage": name, "images": list(sizes), "seconds": {str(k): v["seconds"] for k, v in r.items()},
               "peak_rss_mb": {str(k): peak(v) for k, v in r.items()},
               "memory_ratio": peak(r[large]) / peak(r[small])}
        measured = (f"{r[small]['seconds']:.1f} s, {peak(r[small]):.0f} MB; {r[large]['seconds']:.1f} s, "
                    f"{peak(r[large]):.0f} MB (memory {row['memory_ratio']:.2f}x)")
        if name.startswith("stage 5"):
            f = files_by_size[large]
            base = phase("csv_io", f[out], str(folder / "baseline.csv"), *(f[k] for k in inputs))
            (folder / "baseline.csv").unlink()
            row.update(baseline_seconds=base["seconds"], ratio=r[large]["seconds"] / base["seconds"])
            row.update(cells(name, f"{small:,} and {large:,} images", measured,
                             "memory flat (within 1.3x), time <= 1.5x the bare CSV I/O",
                             f"pandas reading the input, writing the output: {base['seconds']:.0f} s", row["ratio"]))
        else:
            row.update(cells(name, f"{small:,} and {large:,} images", measured, "memory flat (within 1.3x)"))
        rows.append(row)
    shutil.rmtree(folder)
    return rows


def stage6(work: Path, fraction: float) -> list[dict]:
    """Ensembling 3 models' predictions of the test set with avg and wbf, from the caches and from the CSVs."""
    dirs, labels = test_set(work, fraction)
    csvs = model_csvs(work, dirs, labels)
    rows = []
    for source, inputs in (("caches", ["--cache-dirs", *dirs]), ("CSVs", ["--csvs", *map(str, csvs)])):
        for kind in ("avg", "wbf"):
            out = work / f"ensemble_{kind}_{source}.csv"
            ours = measure([sys.executable, "ensemble_predictions_with_weighted_method.py", *inputs, "--labels",
                            str(labels), "--type", kind, "--output", str(out)], work / f"{out.stem}.log")
            print(f"stage 6: {kind} from {source}: {ours['seconds']:.0f} s, peak {peak(ours):.0f} MB", flush=True)
            rows.append({"stage": "stage 6", "ours": ours, **cells(
                f"stage 6: {kind} from the {source}", f"{test_images(fraction):,} images x {ENSEMBLE_MODELS} models",
                f"{ours['seconds']:.0f} s, {gb(peak(ours))}", "<= 10 min, <= 2 GB")})
            out.unlink()
    return rows


def metric(work: Path, data: Path) -> list[dict]:
    """The official mAP of a 300-box submission on the validation set, the ground truth expanded (as official)."""
    from oid_retinanet.demo import full_size as fs
    from oid_retinanet.files import write_csv
    from oid_retinanet.oid.annotations import read_boxes
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.resources import resource_path

    classes = resource_path("challenge-2018-class-descriptions-500.csv")
    mids = read_class_descriptions(classes).mids
    gt = data / "challenge-2019-validation-detection-bbox.csv"
    boxes = read_boxes(str(gt))
    labels, submission = work / "validation-image-labels.csv", work / "validation-submission.csv"
    write_csv(fs.image_labels(boxes, mids), str(labels))
    images = fs.write_submission(submission, boxes, mids)
    print(f"metric: {images:,} images x {fs.MAX_DETECTIONS} predictions", flush=True)
    ours = measure([sys.executable, "evaluate_oid_map.py", "--predictions", str(submission), "--gt-boxes", str(gt),
                    "--gt-labels", str(labels), "--classes", str(classes), "--output-dir", str(work / "map"),
                    "--no-chart"], work / "map.log")
    print(f"  {ours['seconds']:.0f} s, peak {peak(ours):.0f} MB", flush=True)
    return [{"stage": "metric", "ours": ours, **cells(
        "metric: the official mAP (ground truth expanded over the hierarchy)",
        f"{images:,} images, {images * fs.MAX_DETECTIONS:,} predictions", f"{ours['seconds']:.0f} s, {gb(peak(ours))}",
        "<= 60 s, <= 4 GB")}]


def section(result: dict) -> list[str]:
    """The Full scale section of BENCHMARKS.md."""
    lines = [SECTION, "",
             f"Written by `make bench-scale` (bench/full_scale.py) at "
             f"{'' if result['fraction'] == 1 else format(result['fraction'], 'g') + ' of '}Open Images' real counts "
             f"on {describe_machine(result['machine'])}. Synthetic data of the real files' shapes "
             "(`oid_retinanet.demo.full_size`); each stage in its own process; the baseline in the same run. "
             "Peak RSS: the larger of the stage's largest process's (exact, from the kernel) and the sum over its "
             "processes' proportional set sizes (sampled every 0.2 s; a page forked workers share counts once).", "",
             "| Stage | Input | Wall time, peak RSS, disk written | Baseline | Ratio | Bounds |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(r["table"]) + " |" for r in result["stages"]]
    missing = [name for name in STAGES if name not in {r["key"] for r in result["stages"]}]
    if missing:
        lines += ["", f"Not measured in this report: {', '.join(missing)} (`--stages`)."]
    return lines


STAGES = {"stage1": lambda work, data, fraction: stage1(work, data),
          "stage2": lambda work, data, fraction: stage2(work, fraction),
          "stage3": lambda work, data, fraction: stage3(work),
          "stage4": lambda work, data, fraction: stage4(work, fraction),
          "stage5": lambda work, data, fraction: stage5(work, fraction),
          "stage6": lambda work, data, fraction: stage6(work, fraction),
          "metric": lambda work, data, fraction: metric(work, data)}
PHASES = {"pandas_io": lambda out, rows, *inputs: pandas_io(list(inputs), int(rows), out),
          "generator": generator_phase, "speed": speed_phase, "listing": listing_phase, "writing": writing_phase,
          "csv_io": csv_io_phase}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, default=1.0, help="of the real counts (default: %(default)s)")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                   help="measure these only (default: all); at full size their rows replace the same stages' in "
                        "the report, the others kept")
    p.add_argument("--out-dir", default=str(REPO / "bench_output"))
    p.add_argument("--keep", action="store_true", help="keep the generated data for a later run")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        name, *rest = args.phase
        print(json.dumps(PHASES[name](*rest)))
        return 0
    work = Path(args.out_dir) / "full_scale"
    data = work / "dataset"
    data.mkdir(parents=True, exist_ok=True)
    if {"stage1", "stage3", "metric"} & set(args.stages):
        print(f"generating Open Images at {args.fraction:g} of its counts in {data}", flush=True)
        generated(work / "dataset.stamp.json", make_dataset, data, args.fraction)
        print(f"  {disk_mb(data) / 1024:.1f} GB", flush=True)
    result = {"fraction": args.fraction, "stages": [], "machine": machine_info()}
    report = Path(args.out_dir) / "full_scale.json"
    if args.fraction == 1 and set(args.stages) != set(STAGES) and report.exists():
        result["stages"] = [r for r in json.loads(report.read_text())["stages"]
                            if r.get("key") in STAGES and r["key"] not in args.stages]
    try:
        for name in [s for s in STAGES if s in args.stages]:
            rows = [{"key": name, **row} for row in STAGES[name](work, data, args.fraction)]
            result["stages"] = sorted(result["stages"] + rows, key=lambda r: list(STAGES).index(r["key"]))
            if args.fraction == 1:  # after each stage (an interrupted run keeps what it measured); a quick look
                # at a fraction leaves the report's full-size figures alone
                write_result(args.out_dir, "full_scale", result)
                replace_section(REPO / "BENCHMARKS.md", SECTION, section(result))
    finally:
        used = disk_mb(work) / 1024
        if not args.keep:
            shutil.rmtree(work)
        print(f"disk used: {used:.1f} GB ({'kept in ' + str(work) if args.keep else 'removed'})")
    print("\n".join(section(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
