"""Benchmark: the share of CPU time spent in the kernel by a training run and by stage 4, with glibc's default
malloc settings (before) and with the ones every script sets at start (`cli.tune_allocator`, after).

Each case runs the real script as a user would, in a child process, and reads its user and sys CPU time and
minor page faults from getrusage: the demo's training command (ResNet50 from scratch, 120/160, batch 4,
--epochs x 20 steps, a snapshot every epoch), then stage 4 (flip TTA) on the validation images with the snapshot
it wrote. "before" is the same command with OID_MALLOC=system, run in the same benchmark run, alternated with
"after" (--repeats times each, the fastest kept) so that a noisy neighbour hits both.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.bench_train import make_level  # noqa: E402
from bench.common import machine_info, write_result  # noqa: E402


def run_measured(command: list[str], env: dict) -> dict:
    """Wall, user and sys seconds and minor page faults of one child process."""
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"wall_s": round(wall, 2), "user_s": round(user, 2), "sys_s": round(system, 2),
            "sys_share": round(system / (user + system), 3), "minor_faults": after.ru_minflt - before.ru_minflt}


def _cpu(run: dict) -> float:
    return run["user_s"] + run["sys_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(REPO / "bench_output"))
    p.add_argument("--epochs", type=int, default=2, help="training epochs of 20 steps (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each case; the fastest is kept")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_kernel_") as tmp:
        root = Path(tmp)
        make_level(root, n_train=120, n_validation=40, width=160, height=120, seed=0)
        snapshots = root / "snapshots"
        train = ["retinanet_training_level_1/train_oid_level_1_resnet50.py", "--no-weights",
                 "--dataset-path", str(root / "dataset"), "--output-path", str(root / "output"),
                 "--snapshot-path", str(snapshots), "--image-min-side", "120", "--image-max-side", "160",
                 "--batch-size", "4", "--epochs", str(args.epochs), "--steps", "20", "--lr", "1e-4",
                 "--no-evaluation", "--keep-snapshots", "1"]
        snapshot = snapshots / f"resnet50_oid_level_1_{args.epochs:02d}.keras"
        predict = ["retinanet_inference_example.py", "--weights", str(snapshot),
                   "--images", str(root / "dataset" / "validation"), "--labels", str(snapshots / "classes.csv"),
                   "--min-side", "120", "--max-side", "160", "--cache-dir", str(root / "cache"),
                   "--output", str(root / "predictions.csv")]
        cases = {"training": (train, snapshots), "stage4": (predict, root / "cache")}
        result: dict = {"machine": machine_info(), "epochs": args.epochs, "steps": 20, "validation_images": 40}
        for case, (command, made) in cases.items():
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.repeats):
                for label in runs:
                    if case == "stage4":
                        subprocess.run(["rm", "-rf", str(made), str(root / "predictions.csv")], check=True)
                    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
                    if label == "before":
                        env["OID_MALLOC"] = "system"
                    else:
                        env.pop("OID_MALLOC", None)
                    runs[label].append(run_measured(command, env))
                    print(f"{case} {label}: {runs[label][-1]}", flush=True)
            best = {label: min(r, key=_cpu) for label, r in runs.items()}
            best["cpu_ratio_before_over_after"] = round(_cpu(best["before"]) / _cpu(best["after"]), 2)
            best["wall_ratio_before_over_after"] = round(best["before"]["wall_s"] / best["after"]["wall_s"], 2)
            result[case] = best
    path = write_result(args.out_dir, "bench_kernel_time", result)
    for case in cases:
        r = result[case]
        print(f"{case}: kernel share {r['before']['sys_share']:.0%} -> {r['after']['sys_share']:.0%}, "
              f"page faults {r['before']['minor_faults']:,} -> {r['after']['minor_faults']:,}, "
              f"CPU time {r['cpu_ratio_before_over_after']:.2f}x, wall {r['wall_ratio_before_over_after']:.2f}x less")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
