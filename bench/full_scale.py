"""`make bench-scale`: every stage at Open Images' real counts on this machine, against a baseline in the same run.

Generates the synthetic full-size set (`oid_retinanet.demo.full_size`: the v4 and 2019 challenge box files,
14.6 M and 12.2 M rows on 1,743,042 images, validation 41,620 images), runs each stage's real script on it in its
own process (wall time, peak RSS, disk written) and the baseline the issue names beside it, then writes the "Full
scale" section of BENCHMARKS.md and bench_output/full_scale.json. Not part of `make bench` (about an hour on 2
cores); `--fraction 0.01` runs the same at 1% for a quick look (printed only). The generated data is removed at the end
(`--keep` keeps it; a kept set of the same size and generator is reused).

Stages measured so far: stage 1 (2018 levels 1-5 + low samples; the 2019 levels 1-7), stage 2 (20 k and
200 k files, a run killed half way), the training generator's index and one epoch's draw, stage 4's --from-cache
CSVs and stage 6 (avg and wbf, from caches and from CSVs) on 3 models' caches of the test set. The others are
listed as not measured yet.
"""

from __future__ import annotations

import argparse
import json
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
    import numpy as np

    from oid_retinanet.demo import full_size as fs
    from oid_retinanet.files import write_csv
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.resources import resource_path

    boxable = read_class_descriptions(resource_path("class-descriptions-boxable.csv")).mids
    challenge = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")).mids
    rows = {}
    for subset, (v4, c2019) in {"train": (fs.V4_TRAIN, fs.CHALLENGE_2019_TRAIN),
                                "validation": (fs.CHALLENGE_2019_VALIDATION, fs.CHALLENGE_2019_VALIDATION)}.items():
        v4, c2019 = v4.scaled(fraction), c2019.scaled(fraction)
        ids = fs.image_ids(v4.images, np.random.default_rng([1, len(subset)]))  # the same images in both files
        for name, spec, mids, seed in ((f"annotations/{subset}-annotations-bbox.csv", v4, boxable, 2),
                                       (f"challenge-2019-{subset}-detection-bbox.csv", c2019, challenge, 3)):
            t = time.perf_counter()
            df = fs.box_table(spec, mids, seed=seed, ids=ids)
            write_csv(df, str(root / name))
            rows[name] = len(df)
            print(f"  {name}: {len(df):,} boxes on {spec.images:,} images ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    return rows


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants now, in MB (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
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
    main process's (exact, from the kernel), `peak_tree_rss_mb` the sum over it and its worker processes
    (sampled every 0.2 s)."""
    import threading

    rss_file = log.with_suffix(".maxrss")
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(rss_file), *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

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
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "peak_tree_rss_mb": peak[0]}


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
    result = measure([sys.executable, __file__, "--pandas-io", str(out), str(rows), *map(str, inputs)],
                     work / f"{name}.baseline.log")
    out.unlink()
    return result


def table_stage(work: Path, name: str, what: str, argv: list[str], inputs: list[Path], outputs: Path,
                bounds: str) -> dict:
    """A stage that reads box CSVs and writes CSVs, against pandas reading the same and writing as many rows."""
    shutil.rmtree(outputs, ignore_errors=True)
    print(f"{name}: {what}", flush=True)
    ours = measure([sys.executable, *argv], work / f"{name}.log")
    written = sorted(outputs.rglob("*.csv"))
    rows_in, rows_out = csv_rows(inputs), csv_rows(written)
    base = baseline(work, name, inputs, rows_out)
    row = {"stage": name, "what": what, "rows_in": rows_in, "rows_out": rows_out, "ours": ours, "baseline": base,
           "disk_mb": disk_mb(outputs), "ratio": ours["seconds"] / base["seconds"], "bounds": bounds}
    print(f"  {ours['seconds']:.0f} s, peak {ours['peak_rss_mb']:.0f} MB; pandas read + write: "
          f"{base['seconds']:.0f} s, peak {base['peak_rss_mb']:.0f} MB: {row['ratio']:.2f}x", flush=True)
    return row


def stage1(work: Path, data: Path) -> list[dict]:
    out = work / "output"
    train = data / "challenge-2019-train-detection-bbox.csv"
    inputs = [data / "annotations" / f"{s}-annotations-bbox.csv" for s in ("train", "validation")] + [
        data / f"challenge-2019-{s}-detection-bbox.csv" for s in ("train", "validation")]
    rows = [table_stage(work, "stage 1 (2018)", "levels 1-5 + low samples", [
        "create_files_for_training_by_levels.py", "--dataset-path", f"{data}/", "--output-path", f"{out}/",
        "--low-samples"], inputs, out, "peak RSS <= 8 GB, time <= 2x")]
    out2019 = work / "output_2019"
    rows.append(table_stage(work, "stage 1 (2019)", "levels 1-7 from the 2019 train file", [
        "labelProcess/create_files_for_training_by_levels.py", "--train-csv", str(train), "--output-path",
        f"{out2019}/"], [train], out2019, "peak RSS <= 8 GB, time <= 2x"))
    return rows


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Until `path` has `n` lines (or `proc` ends)."""
    while proc.poll() is None:
        if path.exists() and csv_rows([path]) >= n:
            return
        time.sleep(0.2)


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
              f"{runs[n]['peak_rss_mb']:.0f} MB", flush=True)
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
    row = {"stage": "stage 2", "what": "image parameters", "files": sizes,
           "seconds": {str(n): runs[n]["seconds"] for n in sizes},
           "peak_rss_mb": {str(n): runs[n]["peak_rss_mb"] for n in sizes},
           "per_file_ratio": per_file[large] / per_file[small],
           "projected_seconds": per_file[large] * fs.V4_TRAIN.images, "killed_and_resumed_same_bytes": same,
           "bounds": "time a file within 1.25x, memory flat, a killed run resumes to the same CSV"}
    print(f"  per file {row['per_file_ratio']:.2f}x from {small:,} to {large:,} files; killed at half way and "
          f"rerun: {'the same' if same else 'OTHER'} bytes", flush=True)
    return [row]


DRAW_BATCHES = 100_000


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


def stage3_index(work: Path) -> list[dict]:
    """The generator on the level-1 file stage 1 wrote from the 2019 file (every image on disk, as empty files)."""
    import numpy as np
    import pandas as pd

    from oid_retinanet.oid.levels import level_class_file, level_file

    level_csv, classes_csv = level_file(str(work / "output"), "1", "train"), level_class_file(str(work / "output"), "1")
    ids = pd.read_csv(level_csv, usecols=["ImageID"], dtype=str)["ImageID"].unique()
    images = work / "train"
    print(f"stage 3: the training generator's index of {len(ids):,} images", flush=True)
    for digit in "0123456789abcdef":
        (images / digit).mkdir(parents=True, exist_ok=True)
    for image_id in ids.tolist():  # empty files: the index lists the folder, it reads no pixels
        open(images / image_id[0] / f"{image_id}.jpg", "wb").close()
    rng = np.random.default_rng(0)
    width = rng.choice([1024, 768, 683], size=len(ids))
    params = pd.DataFrame({"id": ids, "width": width, "height": np.where(width == 1024, 768, 1024), "channel": 3,
                           "size": 200_000, "md5": "0" * 32})
    params_csv = work / "train_image_params.csv"
    params.to_csv(params_csv, index=False)
    proc = subprocess.run([sys.executable, __file__, "--generator-phase", level_csv, classes_csv, str(params_csv),
                           str(images)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"generator phase failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  index {result['index_seconds']:.0f} s, peak {result['peak_rss_mb']:.0f} MB; a draw of "
          f"{result['batches']:,} batches {result['draw_seconds']:.2f} s", flush=True)
    return [{"stage": "stage 3", "what": "the training generator's index and draw", **result,
             "bounds": "index <= 60 s and <= 4 GB, a draw of 100,000 batches <= 5 s"}]


ENSEMBLE_MODELS = 3


def stage6(work: Path, fraction: float) -> list[dict]:
    """Ensembling 3 models' predictions of the test set (99,999 images, up to 300 boxes a row, each image and its
    mirror) with avg and wbf, from the caches and from the models' CSVs (stage 4's --from-cache writes them)."""
    import multiprocessing

    import numpy as np

    from oid_retinanet.demo import full_size as fs
    from oid_retinanet.oid.classes import read_class_descriptions, write_class_descriptions
    from oid_retinanet.oid.levels import levels_2018
    from oid_retinanet.resources import resource_path

    n = max(200, round(fs.TEST_IMAGES * fraction))
    caches = work / "caches"
    labels = work / "labels_level_1.csv"
    level1 = levels_2018(read_class_descriptions(resource_path("class-descriptions-boxable.csv")))["1"]
    write_class_descriptions(str(labels), level1.classes)
    print(f"stage 6: caches of {n:,} images x {ENSEMBLE_MODELS} models", flush=True)
    t = time.perf_counter()
    parts = np.array_split(fs.image_ids(n, np.random.default_rng(6)), 2)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        dirs = pool.starmap(fs.write_caches, [(str(caches), len(part), ENSEMBLE_MODELS, 10 + k, fs.CACHE_CLASSES,
                                               part) for k, part in enumerate(parts)])[0]
    print(f"  written in {time.perf_counter() - t:.0f} s, {disk_mb(caches) / 1024:.1f} GB", flush=True)
    rows = []
    csvs = [work / f"model_{m}.csv" for m in range(ENSEMBLE_MODELS)]
    runs = []
    for d, out in zip(dirs, csvs):
        runs.append(measure([sys.executable, "retinanet_inference_example.py", "--from-cache", "--cache-dir", d,
                             "--labels", str(labels), "--output", str(out)], work / f"{out.stem}.log"))
        print(f"  stage 4 --from-cache {out.name}: {runs[-1]['seconds']:.0f} s", flush=True)
    slowest = max(runs, key=lambda r: r["seconds"])
    rows.append({"stage": "stage 4", "what": "--from-cache: the CSV of one model's cache (the slowest of 3)",
                 "images": n, "ours": {**slowest, "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in runs)},
                 "bounds": "<= 2x pandas writing the same CSV"})
    for source, inputs in (("caches", ["--cache-dirs", *dirs]), ("CSVs", ["--csvs", *map(str, csvs)])):
        for kind in ("avg", "wbf"):
            out = work / f"ensemble_{kind}_{source}.csv"
            ours = measure([sys.executable, "ensemble_predictions_with_weighted_method.py", *inputs, "--labels",
                            str(labels), "--type", kind, "--output", str(out)], work / f"{out.stem}.log")
            print(f"  {kind} from {source}: {ours['seconds']:.0f} s, peak {ours['peak_tree_rss_mb']:.0f} MB "
                  "(all processes)", flush=True)
            rows.append({"stage": "stage 6", "what": f"{kind} from the {source}", "images": n,
                         "models": ENSEMBLE_MODELS, "ours": ours, "bounds": "<= 10 min, <= 2 GB"})
            out.unlink()
    return rows


def _stage_row(r: dict) -> str:
    if r["stage"] in ("stage 4", "stage 6"):
        o = r["ours"]
        models = f" x {r['models']} models" if "models" in r else ""
        return (f"| {r['stage']}: {r['what']} | {r['images']:,} images{models} | {o['seconds']:.0f} s, "
                f"{o['peak_tree_rss_mb'] / 1024:.2f} GB (all processes) | | | {r['bounds']} |")
    if r["stage"] == "stage 3":
        return (f"| stage 3: the training generator (`load_level_data`, per-class lists; level 1) | {r['images']:,} "
                f"images, {r['boxes']:,} boxes | index {r['index_seconds']:.0f} s, {r['peak_rss_mb'] / 1024:.2f} GB; "
                f"one epoch's draw of {r['batches']:,} batches of 2: {r['draw_seconds']:.2f} s | | | {r['bounds']} |")
    if r["stage"] == "stage 2":
        small, large = r["files"]
        sec, rss = r["seconds"], r["peak_rss_mb"]
        return (f"| stage 2: image parameters (small JPEGs, 2 workers) | {small:,} and {large:,} files | "
                f"{sec[str(small)]:.1f} s, {rss[str(small)]:.0f} MB; {sec[str(large)]:.1f} s, "
                f"{rss[str(large)]:.0f} MB; projected for {1_743_042:,} files: "
                f"{r['projected_seconds'] / 60:.0f} min | the {small:,}-file run | per file **"
                f"{r['per_file_ratio']:.2f}x**; killed half way and rerun: "
                f"{'same bytes' if r['killed_and_resumed_same_bytes'] else 'DIFFERENT bytes'} | {r['bounds']} |")
    o, b = r["ours"], r["baseline"]
    return (f"| {r['stage']}: {r['what']} | {r['rows_in']:,} rows | {o['seconds']:.0f} s, "
            f"{o['peak_rss_mb'] / 1024:.2f} GB, {r['disk_mb'] / 1024:.2f} GB ({r['rows_out']:,} rows) | "
            f"pandas read + write as many rows: {b['seconds']:.0f} s, {b['peak_rss_mb'] / 1024:.2f} GB | "
            f"**{r['ratio']:.2f}x** | {r['bounds']} |")


def section(result: dict) -> list[str]:
    """The Full scale section of BENCHMARKS.md."""
    lines = [SECTION, "",
             f"Written by `make bench-scale` (bench/full_scale.py) at {result['fraction']:g} of Open Images' counts "
             f"on {describe_machine(result['machine'])}. Synthetic data of the real files' shapes "
             "(`oid_retinanet.demo.full_size`); each stage in its own process; the baseline in the same run.", "",
             "| Stage | Input | Wall time, peak RSS, disk written | Baseline | Ratio | Bounds |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [_stage_row(r) for r in result["stages"]]
    lines += ["", "Not measured yet (issue 28): the training generator's images/s at 768x1024, stage 4's listing "
              "for resume and its pandas baseline, stage 5, the 2019 helpers, the official mAP, stage 6's baseline."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, default=1.0, help="of the real counts (default: %(default)s)")
    p.add_argument("--out-dir", default=str(REPO / "bench_output"))
    p.add_argument("--keep", action="store_true", help="keep the generated data for a later run")
    p.add_argument("--pandas-io", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--generator-phase", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.generator_phase:
        print(json.dumps(generator_phase(*args.generator_phase)))
        return 0
    if args.pandas_io:
        out, rows, *inputs = args.pandas_io
        pandas_io(inputs, int(rows), out)
        return 0
    work = Path(args.out_dir) / "full_scale"
    data = work / "dataset"
    data.mkdir(parents=True, exist_ok=True)
    print(f"generating Open Images at {args.fraction:g} of its counts in {data}", flush=True)
    generated(work / "dataset.stamp.json", make_dataset, data, args.fraction)
    print(f"  {disk_mb(data) / 1024:.1f} GB", flush=True)
    result = {"fraction": args.fraction, "stages": [], "machine": machine_info()}
    try:
        for stage in (lambda: stage1(work, data), lambda: stage2(work, args.fraction), lambda: stage3_index(work),
                      lambda: stage6(work, args.fraction)):
            result["stages"] += stage()
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
