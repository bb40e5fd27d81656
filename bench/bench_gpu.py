"""Benchmark on a GPU (issues 12, 13, 14): our RetinaNet on Keras' torch and jax backends beside torchvision's.

Parts (`--parts`), each case timed after warm-up calls, the median of repeated calls, every call ending in a
device synchronisation (a numpy result, a Python float, or torch.cuda.synchronize):
- inference (issue 12): `retinanet(K)` + `retinanet_bbox` (ResNet50, keras-retinanet's filtering) at HxW,
  float32 and bfloat16 (dtype policy 'mixed_bfloat16'), batch 1 and 8, images/s with the input already on the
  device and from a host numpy array (`predict_on_batch`, as stage 4 calls it); beside it torchvision's
  `retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=K)` in eval mode, its transform set
  to min_size=H, max_size=W (checked: it runs at exactly HxW), float32 and bfloat16 autocast. Last, if time is
  left, our network alone (the training model's raw outputs, no box decoding or filtering), also at the
  largest batch with `retinanet(..., winograd=4)` (Winograd F(4x4, 3x3) convolutions, the default on a CPU; on a
  GPU the default is the direct convolution: this case tells whether Winograd pays there too).
- training (issue 13): one training step repeated (`train_on_batch`: `train.trainer.compile_model`'s focal and
  smooth-L1 losses, Adam with clipnorm) on batch 8 with fixed targets (`data.targets.anchor_targets` on
  synthetic boxes), float32 and mixed bfloat16; beside it torchvision's step (model(images, targets), backward,
  the same per-tensor gradient-norm clipping, Adam step), float32 and bfloat16 autocast. Images are copied from
  the host in every step by both, as training does.
- stage4 (issue 14): `predict/inference.py`'s `predict_images` with flip TTA on generated JPEGs of HxW
  (bench_inference.measure_stage4): images/s and the share of the time outside the model call.

Weights: random, except that the last classification conv is rescaled so that about --candidates (anchor,
class) scores per image pass the 0.05 filter, as a trained model's do (a fresh model's prior-probability bias
gives none, which would leave box filtering and NMS out of the time); the same rule is applied to torchvision's
model. BatchNorm is frozen in both (ours always is; torchvision's BatchNorm2d layers are swapped for
FrozenBatchNorm2d, as torchvision does when it starts from ImageNet weights). cuDNN/TF32 settings are the
libraries' defaults (recorded).

Each backend runs in its own processes (KERAS_BACKEND is fixed at import), a process per part and backend;
each case's result is recorded as soon as it ends, so one that fails (out of memory, a backend error, a crashed
process) is recorded with its error and the others go on. --time-budget-s bounds the whole run: cases that do
not fit are recorded as skipped, and a process still running at the deadline is killed. Writes bench_gpu.json
and bench_gpu.md to --out-dir after every process, and prints the markdown tables at the end.
`--quick` runs tiny sizes on any machine (a CPU too) to test the wiring; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine_info  # noqa: E402

PARTS = ("inference", "training", "stage4")
BACKENDS = ("torch", "jax")
REFERENCE = "torchvision"
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
SCORE_THRESHOLD = 0.05  # keras-retinanet's and torchvision's RetinaNet score filter
GRACE_S = 20.0  # after the deadline, before a running worker is killed


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one run."""

    height: int = 768
    width: int = 1024
    classes: int = 443
    batches: tuple[int, ...] = (1, 8)
    train_batch: int = 8
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    warmup: int = 3  # calls after the first one (which compiles), before timing
    repeats: int = 20  # timed calls at most (fewer when they would take more than cap_s)
    train_repeats: int = 10
    cap_s: float = 15.0  # timed seconds per measurement at most
    candidates: int = 5000  # (anchor, class) scores above 0.05 per image, as set by the calibration
    stage4_images: int = 48
    min_case_s: float = 20.0  # a case starts only with this much of the budget left
    seed: int = 0


QUICK = Settings(height=128, width=160, classes=7, batches=(1, 2), train_batch=2, warmup=1, repeats=2,
                 train_repeats=2, cap_s=5.0, candidates=100, stage4_images=4, min_case_s=0.0)


# ----------------------------------------------------------------------------------------------------------
# The plan: jobs (one worker process each) of cases, in priority order


def case_id(case: dict) -> str:
    parts = [case["part"], case["group"], case["dtype"]]
    if case["part"] == "stage4":
        parts += [f"bs{case['batch_size']}", f"w{case['workers']}"]
    else:
        parts.append(f"b{case['batch']}")
    if case["part"] == "inference":
        parts.append(case["variant"])
    if "winograd" in case:
        parts.append(f"winograd{case['winograd']}" if case["winograd"] else "direct")
    return "/".join(parts)


def make_plan(parts: list[str], backends: list[str], reference: bool, network_only: bool,
              s: Settings) -> list[dict]:
    """Jobs in run order: full inference for every backend, training, stage 4, then the network-only cases; within
    a part keras-torch, torchvision, then keras-jax (whose compilations take the longest)."""
    keras_groups = [f"keras-{b}" for b in BACKENDS if b in backends]
    groups = keras_groups[:1] + ([REFERENCE] if reference else []) + keras_groups[1:]
    jobs = []

    def job(group: str, part: str, cases: list[dict]) -> None:
        for c in cases:
            c.update(group=group, part=part)
            c["id"] = case_id(c)
        if cases:
            jobs.append({"group": group, "part": part, "cases": cases})

    if "inference" in parts:
        for g in groups:
            job(g, "inference", [{"dtype": d, "batch": b, "variant": "full"} for d in s.dtypes for b in s.batches])
    if "training" in parts:
        for g in groups:
            job(g, "training", [{"dtype": d, "batch": s.train_batch} for d in s.dtypes])
    if "stage4" in parts:
        # the script's defaults (one image a call, two reading threads), then a batched, more parallel setting
        settings = [(d, 1, 2) for d in s.dtypes] + [(s.dtypes[-1], 4, 8)]
        for g in keras_groups:
            job(g, "stage4", [{"dtype": d, "batch_size": bs, "workers": w} for d, bs, w in settings])
    if "inference" in parts and network_only:
        # the network alone, then with Winograd F(4x4, 3x3) convolutions (the default on a CPU, not on a GPU)
        for g in keras_groups:
            job(g, "inference", [{"dtype": d, "batch": b, "variant": "network"} for d in s.dtypes for b in s.batches]
                + [{"dtype": d, "batch": max(s.batches), "variant": "network", "winograd": 4} for d in s.dtypes])
    return jobs


# ----------------------------------------------------------------------------------------------------------
# The orchestrator: runs the jobs in worker processes within the time budget, collects and writes the results


def gpu_info() -> dict | None:
    """nvidia-smi's view of the GPU (None without nvidia-smi)."""
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields.split(","), values))


def _read_records(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed worker
                pass
    return records


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_job(job: dict, s: Settings, deadline: float, work: Path, index: int, options: dict) -> tuple[list, dict]:
    """Run one job's cases in worker processes (a new one after a crash); returns (case records, environment)."""
    results: dict[str, dict] = {}
    env_info: dict = {}
    remaining = list(job["cases"])
    attempt = 0
    while remaining:
        left = deadline - time.time()
        if left < s.min_case_s + 5:
            for c in remaining:
                results[c["id"]] = {**c, "status": "skipped", "error": "time budget spent"}
            break
        name = f"job{index:02d}_{job['group']}_{job['part']}_{attempt}"
        spec = {"group": job["group"], "part": job["part"], "cases": remaining, "settings": asdict(s),
                "deadline": deadline, "work": str(work), "results": str(work / f"{name}.jsonl"), **options}
        spec_path = work / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        Path(spec["results"]).unlink(missing_ok=True)  # left by an earlier run in the same work folder
        stderr_path = work / f"{name}.stderr"
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
        if job["group"].startswith("keras-"):
            env["KERAS_BACKEND"] = job["group"].split("-", 1)[1]
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                    cwd=REPO, env=env, stdout=None, stderr=err, start_new_session=True)
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.time() + GRACE_S))
                killed = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group
                proc.wait()
                code, killed = proc.returncode, True
        reported = {}
        for rec in _read_records(Path(spec["results"])):
            if "environment" in rec:
                env_info = rec["environment"]
            elif "id" in rec:
                reported[rec["id"]] = rec
        results.update(reported)
        missing = [c for c in remaining if c["id"] not in reported]
        if not missing:
            break
        first = missing[0]
        if killed:
            results[first["id"]] = {**first, "status": "error",
                                    "error": "killed at the time budget (the case was still running)"}
            for c in missing[1:]:
                results[c["id"]] = {**c, "status": "skipped", "error": "time budget spent"}
            break
        results[first["id"]] = {**first, "status": "error",
                                "error": f"worker process ended with exit code {code} during this case",
                                "stderr_tail": _tail(stderr_path)}
        remaining = missing[1:]
        attempt += 1
    return [results[c["id"]] for c in job["cases"]], env_info


def orchestrate(args: argparse.Namespace, s: Settings) -> dict:
    """Run the plan; write the results after every job; return them."""
    start = time.time()
    deadline = start + args.time_budget_s
    out_dir, work = Path(args.out_dir), Path(args.work_dir or Path(args.out_dir) / "bench_gpu_work")
    work.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.parts, args.backends, not args.no_reference, not args.no_network_only, s)
    options = {"allow_cpu": args.quick or args.allow_cpu, "cudnn_benchmark": args.cudnn_benchmark,
               "quick": args.quick}
    result = {"benchmark": "bench_gpu", "quick": args.quick, "settings": asdict(s), "parts": args.parts,
              "backends": args.backends, "reference": not args.no_reference, "time_budget_s": args.time_budget_s,
              "machine": machine_info(), "gpu": gpu_info(), "environments": {}, "cases": [],
              "planned_cases": sum(len(j["cases"]) for j in plan), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"bench_gpu: {result['planned_cases']} cases in {len(plan)} worker processes, budget "
          f"{args.time_budget_s:.0f} s; GPU: {result['gpu'] or 'none seen by nvidia-smi'}", flush=True)
    for index, job in enumerate(plan):
        print(f"[{time.time() - start:6.1f} s] {job['group']} {job['part']}: {len(job['cases'])} cases", flush=True)
        records, env_info = run_job(job, s, deadline, work, index, options)
        if env_info:
            result["environments"][job["group"]] = env_info
        result["cases"] += records
        for rec in records:
            if rec["status"] != "ok":
                print(f"    {rec['id']}: {rec['status']}: {rec.get('error', '')}", flush=True)
        result["wall_s"] = time.time() - start
        write_outputs(out_dir, result)
    return result


def write_outputs(out_dir: Path, result: dict) -> None:
    """bench_gpu.json and bench_gpu.md in out_dir, each written atomically."""
    from oid_retinanet.files import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "bench_gpu.json", json.dumps(result, indent=1, default=float) + "\n")
    atomic_write_text(out_dir / "bench_gpu.md", markdown(result))


# ----------------------------------------------------------------------------------------------------------
# The markdown report


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _status(rec: dict) -> str:
    if rec["status"] == "ok":
        return "ok"
    text = " ".join(str(rec.get("error", "")).split())
    return f"{rec['status']}: {text[:110]}" + ("..." if len(text) > 110 else "")


def _reference_rate(cases: list[dict], rec: dict) -> float | None:
    for other in cases:
        if (other["group"] == REFERENCE and other["part"] == rec["part"] and other["status"] == "ok"
                and other["dtype"] == rec["dtype"] and other.get("batch") == rec.get("batch")):
            return other["images_per_s"]
    return None


def _ratio(cases: list[dict], rec: dict) -> str:
    if rec["group"] == REFERENCE or rec["status"] != "ok" or rec.get("variant", "full") != "full":
        return ""
    ref = _reference_rate(cases, rec)
    return f"{rec['images_per_s'] / ref:.2f}x" if ref else "-"


def markdown(result: dict) -> str:
    """The report: a header and one table per part."""
    s = result["settings"]
    cases = result["cases"]
    gpu = result.get("gpu") or {}
    envs = result.get("environments", {})
    versions = sorted({f"{k} {v}" for e in envs.values() for k, v in e.get("versions", {}).items()})
    devices = sorted({e.get("device", "?") for e in envs.values()})
    lines = ["# GPU benchmark: issues 12 (inference), 13 (training), 14 (stage 4)", ""]
    if result["quick"]:
        lines += ["**--quick: tiny sizes to test the wiring; these numbers mean nothing.**", ""]
    gpu_text = (f"{gpu.get('name')}, driver {gpu.get('driver_version')}, {gpu.get('memory.total')}, SM clock "
                f"{gpu.get('clocks.sm')} (max {gpu.get('clocks.max.sm')})" if gpu else "no GPU seen by nvidia-smi")
    lines += [f"GPU: {gpu_text}. Devices used: {', '.join(devices) or '-'}.",
              f"Host: {result['machine']['cpu']}, {result['machine']['cores']} cores. Versions: "
              f"{', '.join(versions) or '-'}.",
              f"Input {s['height']}x{s['width']}, {s['classes']} classes, ResNet50. Scores calibrated to about "
              f"{s['candidates']} (anchor, class) pairs above {SCORE_THRESHOLD} per image (counted in float32 on "
              "the first image). Medians of up to "
              f"{s['repeats']} (training {s['train_repeats']}) timed calls after {s['warmup']} warm-up calls beyond "
              f"the first. Budget {result['time_budget_s']:.0f} s, used {result.get('wall_s', 0):.0f} s; "
              f"{sum(c['status'] == 'ok' for c in cases)} of {result['planned_cases']} cases measured.", ""]
    for group, e in sorted(envs.items()):
        notes = "; ".join(f"{k}: {v}" for k, v in e.get("notes", {}).items())
        if notes:
            lines.append(f"- {group}: {notes}")
    if envs:
        lines.append("")

    def model_name(c: dict) -> str:
        name = {"full": "inference model", "network": "network only"}[c["variant"]]
        if "winograd" in c:
            w = c["winograd"]
            return name + (f", Winograd F({w}x{w}, 3x3) convs" if w else ", direct conv")
        if c.get("classification_conv", "Conv2D") != "Conv2D":
            return name + f" ({c['classification_conv']})"
        return name

    def timing(c: dict) -> list[str]:
        return [_fmt(c.get("images_per_s"), 2), _fmt(1000 * c["median_s"] if "median_s" in c else None)]

    def share(c: dict) -> str:
        value = c.get("outside_model_share")
        return "-" if value is None else f"{_fmt(100 * value)}%"

    sections = [
        ("inference", "Inference (issue 12)",
         ["backend", "model", "dtype", "batch", "images/s", "ms per batch", "images/s, input from host",
          "first call s", "candidates / detections per image", "peak device MB", "vs torchvision", "status"],
         lambda c: [c["group"], model_name(c), c["dtype"], c["batch"], *timing(c),
                    _fmt(c.get("images_per_s_host_input"), 2), _fmt(c.get("first_call_s")),
                    (f"{_fmt(c.get('candidates_per_image'), 0)} / {_fmt(c.get('detections_per_image'), 0)}"
                     if c["status"] == "ok" else ""),
                    _fmt(c.get("peak_device_mb"), 0), _ratio(cases, c), _status(c)]),
        ("training", "Training (issue 13)",
         ["backend", "dtype", "batch", "images/s", "ms per step", "first step s", "loss first -> last",
          "peak device MB", "vs torchvision", "status"],
         lambda c: [c["group"], c["dtype"], c["batch"], *timing(c), _fmt(c.get("first_call_s")),
                    (f"{_fmt(c.get('loss_first'), 3)} -> {_fmt(c.get('loss_last'), 3)}" if c["status"] == "ok" else ""),
                    _fmt(c.get("peak_device_mb"), 0), _ratio(cases, c), _status(c)]),
        ("stage4", "Stage 4 inference with flip TTA (issue 14)",
         ["backend", "dtype", "images a call", "reading threads", "images", "images/s", "model call s",
          "outside the model", "detections per image", "status"],
         lambda c: [c["group"], c["dtype"], c["batch_size"], c["workers"], _fmt(c.get("images")),
                    _fmt(c.get("images_per_s"), 2), _fmt(c.get("model_s"), 2), share(c),
                    _fmt(c.get("detections_per_image"), 0), _status(c)]),
    ]
    for part, title, columns, cells in sections:
        rows = [c for c in cases if c["part"] == part]
        if rows:
            lines += [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(str(v) for v in cells(c)) + " |" for c in rows]
            lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# The worker: one backend, one part; each case's record is appended to the results file as soon as it ends


def score_calibration(raw_logits: np.ndarray, candidates: int, rng: np.random.Generator) -> dict:
    """alpha, beta such that alpha * raw + beta > logit(0.05) for about `candidates` of the values of one image.

    raw_logits: the last classification conv's output minus its bias, every (anchor, class) of one image.
    """
    u = np.asarray(raw_logits, np.float64).ravel()
    std = float(u.std())
    if not std > 0:
        raise RuntimeError("the classification logits do not vary: cannot calibrate the scores")
    sample = u if u.size <= 4_000_000 else u[rng.integers(0, u.size, 4_000_000)]
    fraction = min(0.5, candidates / u.size)
    alpha = 1.0 / std
    beta = math.log(SCORE_THRESHOLD / (1 - SCORE_THRESHOLD)) - float(np.quantile(alpha * sample, 1 - fraction))
    return {"alpha": alpha, "beta": beta, "raw_logit_std": std, "target_candidates": candidates}


def _make_inputs(s: Settings, work: Path, count: int) -> list[str]:
    """`count` generated JPEGs of exactly height x width (so no model resizes them)."""
    from bench.bench_inference import make_images

    return make_images(work / f"images_{s.height}x{s.width}", count, s.height, s.width)


def _keras_input(paths: list[str], s: Settings) -> np.ndarray:
    from oid_retinanet.data.preprocess import prepare_image

    x = np.stack([prepare_image(p, min_side=min(s.height, s.width), max_side=max(s.height, s.width))[0]
                  for p in paths])
    if x.shape[1:3] != (s.height, s.width):
        raise RuntimeError(f"prepared input is {x.shape[1:3]}, expected {(s.height, s.width)}")
    return x


def _describe(fn) -> str:
    """fn() for the report's notes, or why it failed (an API that moved must not stop the benchmark)."""
    try:
        return str(fn())
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def timed(fn, warmup: int, repeats: int, cap_s: float, deadline: float) -> dict:
    """fn() once (the first call: compilation, allocation), `warmup` more, then the median of up to `repeats`
    calls (fewer when they would take more than cap_s or a quarter of the time left; at least 2)."""
    from bench.bench_model import time_calls

    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    last = first
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        last = time.perf_counter() - t
    cap = min(cap_s, max(0.0, (deadline - time.time()) / 4))
    n = int(max(min(2, repeats), min(repeats, cap / max(last, 1e-6))))
    r = time_calls(fn, 0, n)
    walls = r["wall_all"]
    return {"first_call_s": first, "median_s": r["wall_s"], "cpu_s_median": r["cpu_s"], "repeats": n,
            "min_s": float(min(walls)), "max_s": float(max(walls))}


class Worker:
    """State of a worker process: its backend, the models built so far, the device-memory probes."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.group = spec["group"]
        self.s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()})
        self.deadline = spec["deadline"]
        self.work = Path(spec["work"])
        self.rng = np.random.default_rng(self.s.seed)
        self.models: dict = {}
        self.notes: dict = {}
        self.torch = None
        self.jax = None

    # --- environment -----------------------------------------------------------------------------------
    def environment(self) -> dict:
        versions = {"numpy": np.__version__}
        device = "cpu"
        if self.group.startswith("keras-"):
            import keras

            versions["keras"] = keras.__version__
            self.notes["backend"] = keras.backend.backend()
        if self.group in ("keras-torch", REFERENCE):
            import torch

            self.torch = torch
            versions["torch"] = torch.__version__
            if torch.cuda.is_available():
                device = torch.cuda.get_device_name(0)
                torch.backends.cudnn.benchmark = bool(self.spec.get("cudnn_benchmark"))
                self.notes["cuda"] = _describe(lambda: (
                    f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, TF32 in convolutions "
                    f"{torch.backends.cudnn.allow_tf32}, in matmuls {torch.backends.cuda.matmul.allow_tf32}, "
                    f"cudnn.benchmark {torch.backends.cudnn.benchmark}"))
        if self.group == REFERENCE:
            from bench.gpu.torchvision_cpu_ops import import_torchvision

            tv, ops = import_torchvision()
            versions["torchvision"] = tv.__version__
            self.notes["torchvision ops"] = ops
        if self.group == "keras-jax":
            import jax

            self.jax = jax
            versions["jax"] = jax.__version__
            d = jax.devices()[0]
            device = d.device_kind if d.platform != "cpu" else "cpu"
            self.notes["jax"] = _describe(lambda: (f"platform {d.platform}, default matmul precision "
                                                   f"{jax.config.jax_default_matmul_precision or 'default'}"))
        if device == "cpu" and not self.spec.get("allow_cpu"):
            raise RuntimeError(f"{self.group} sees no GPU (run with --quick or --allow-cpu to measure on the CPU)")
        return {"group": self.group, "device": device, "versions": versions, "notes": self.notes}

    def reset_peak(self) -> None:
        if self.torch is not None and self.torch.cuda.is_available():
            self.torch.cuda.reset_peak_memory_stats()

    def peak_device_mb(self) -> float | None:
        if self.torch is not None and self.torch.cuda.is_available():
            return self.torch.cuda.max_memory_allocated() / 2**20
        if self.jax is not None:
            stats = self.jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:  # since the process started: JAX has no reset
                return stats["peak_bytes_in_use"] / 2**20
        return None

    def sync(self) -> None:
        if self.torch is not None and self.torch.cuda.is_available():
            self.torch.cuda.synchronize()

    # --- Keras models ----------------------------------------------------------------------------------
    def keras_models(self, dtype: str, calibration_input: np.ndarray, winograd: int | None = None) -> dict:
        """The training and inference models of `dtype`: the float32 model with the code's defaults is built and
        calibrated first, the others get its weights. winograd: None (the default), or model.retinanet's
        `winograd` option (the Winograd tile side, 0 for the direct convolution), where the model code has it."""
        key = (dtype, winograd)
        base = ("fp32", None)
        if key in self.models:
            return self.models[key]
        if key != base and base not in self.models:
            self.keras_models("fp32", calibration_input)
        import inspect

        import keras

        from oid_retinanet.model.retinanet import retinanet, retinanet_bbox

        options = {}
        if winograd is not None:
            if "winograd" not in inspect.signature(retinanet).parameters:
                raise RuntimeError("this model code has no winograd option")
            options["winograd"] = winograd
        keras.utils.set_random_seed(self.s.seed)
        t = time.perf_counter()
        model = retinanet(self.s.classes, dtype_policy=POLICIES[dtype], **options)
        entry = {}
        if key == base:
            entry["calibration"] = self._calibrate_keras(model, calibration_input)
            probs = np.asarray(model.predict_on_batch(calibration_input[:1])[1], np.float32)
            entry["candidates_per_image"] = float((probs > SCORE_THRESHOLD).sum())
        else:  # the same weights; candidates counted in float32 (another count would cost a JAX compilation)
            first = self.models[base]
            model.set_weights(first["training"].get_weights())
            entry.update(calibration=first["calibration"], candidates_per_image=first["candidates_per_image"])
        entry.update(training=model, inference=retinanet_bbox(model))
        entry["build_s"] = time.perf_counter() - t
        entry["classification_conv"] = type(
            model.get_layer("classification_submodel").get_layer("pyramid_classification")).__name__
        self.models[key] = entry
        return entry

    def _calibrate_keras(self, model, x: np.ndarray) -> dict:
        from keras.ops import convert_to_numpy

        layer = model.get_layer("classification_submodel").get_layer("pyramid_classification")
        probs = np.asarray(model.predict_on_batch(x[:1])[1], np.float64)
        bias = np.asarray(convert_to_numpy(layer.bias), np.float64)
        probs = np.clip(probs, 1e-12, 1 - 1e-12)
        raw = np.log(probs / (1 - probs)) - bias.mean()  # the bias starts constant (the prior probability)
        cal = score_calibration(raw, self.s.candidates, self.rng)
        layer.kernel.assign(np.asarray(convert_to_numpy(layer.kernel)) * cal["alpha"])
        layer.bias.assign(np.full(layer.bias.shape, cal["beta"], np.float32))
        return cal

    # --- torchvision models ----------------------------------------------------------------------------
    def torchvision_model(self, calibration_images: list) -> dict:
        if "tv" in self.models:
            return self.models["tv"]
        torch = self.torch
        from torchvision.models.detection import retinanet_resnet50_fpn

        torch.manual_seed(self.s.seed)
        t = time.perf_counter()
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=self.s.classes,
                                       min_size=self.s.height, max_size=self.s.width)
        _freeze_batchnorm(model)
        model = model.to(self.device()).eval()
        head = model.head.classification_head
        with torch.inference_mode():
            image_list, _ = model.transform([calibration_images[0].to(self.device())])
            size = tuple(image_list.tensors.shape[-2:])
            if size != (self.s.height, self.s.width):
                raise RuntimeError(f"torchvision's transform makes {size}, not {(self.s.height, self.s.width)}")
            features = list(model.backbone(image_list.tensors).values())
            logits = head(features)
            raw = (logits - head.cls_logits.bias[0]).float().cpu().numpy()
        cal = score_calibration(raw, self.s.candidates, self.rng)
        with torch.no_grad():
            head.cls_logits.weight.mul_(cal["alpha"])
            head.cls_logits.bias.fill_(cal["beta"])
            logits = head(features)
            candidates = float((torch.sigmoid(logits) > SCORE_THRESHOLD).sum())
        entry = {"model": model, "calibration": cal, "candidates_per_image": candidates,
                 "build_s": time.perf_counter() - t, "transformed_size": list(size)}
        self.models["tv"] = entry
        return entry

    def device(self):
        return self.torch.device("cuda" if self.torch.cuda.is_available() else "cpu")

    def autocast(self, dtype: str):
        if dtype == "fp32":
            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device().type, dtype=self.torch.bfloat16)

    def torch_images(self, paths: list[str]) -> list:
        """RGB float images in [0, 1], (3, H, W), on the host: torchvision's input."""
        import cv2

        return [self.torch.from_numpy(np.ascontiguousarray(cv2.imread(p)[:, :, ::-1].transpose(2, 0, 1))).float()
                / 255.0 for p in paths]

    # --- cases -----------------------------------------------------------------------------------------
    def run(self, case: dict) -> dict:
        fn = getattr(self, f"{case['part']}_{'torchvision' if self.group == REFERENCE else 'keras'}")
        return fn(case)

    def inference_keras(self, case: dict) -> dict:
        import keras

        s, b = self.s, case["batch"]
        paths = _make_inputs(s, self.work, max(s.batches))
        x_all = _keras_input(paths, s)
        entry = self.keras_models(case["dtype"], x_all, case.get("winograd"))
        model = entry["inference"] if case["variant"] == "full" else entry["training"]
        x = x_all[:b]
        x_device = keras.ops.convert_to_tensor(x)
        r = timed(lambda: model.predict_on_batch(x_device), s.warmup, s.repeats, s.cap_s, self.deadline)
        host = timed(lambda: model.predict_on_batch(x), 0, s.repeats, s.cap_s / 2, self.deadline)
        out = {**r, "images_per_s": b / r["median_s"], "images_per_s_host_input": b / host["median_s"],
               "host_input": host, "build_s": entry["build_s"], "calibration": entry["calibration"],
               "candidates_per_image": entry["candidates_per_image"],
               "classification_conv": entry["classification_conv"]}
        if case["variant"] == "full":
            scores = np.asarray(model.predict_on_batch(x_device)[1])
            out["detections_per_image"] = float((scores > -1).sum() / b)
        return out

    def inference_torchvision(self, case: dict) -> dict:
        torch = self.torch
        s, b = self.s, case["batch"]
        paths = _make_inputs(s, self.work, max(s.batches))
        host_images = self.torch_images(paths)
        entry = self.torchvision_model(host_images)
        model, dev = entry["model"], self.device()
        on_device = [im.to(dev) for im in host_images[:b]]
        last: list = []

        def call(images_fn):
            def run():
                with torch.inference_mode(), self.autocast(case["dtype"]):
                    out = model(images_fn())
                self.sync()
                last[:] = out

            return run

        r = timed(call(lambda: on_device), s.warmup, s.repeats, s.cap_s, self.deadline)
        host = timed(call(lambda: [im.to(dev) for im in host_images[:b]]), 0, s.repeats, s.cap_s / 2,
                     self.deadline)
        return {**r, "images_per_s": b / r["median_s"], "images_per_s_host_input": b / host["median_s"],
                "host_input": host, "build_s": entry["build_s"], "calibration": entry["calibration"],
                "candidates_per_image": entry["candidates_per_image"],
                "transformed_size": entry["transformed_size"],
                "detections_per_image": float(sum(len(o["scores"]) for o in last) / b)}

    def _training_data(self, b: int):
        from bench.bench_targets import make_batch

        shapes = [(self.s.height, self.s.width)] * b
        boxes, labels = make_batch(np.random.default_rng(self.s.seed + 1), shapes, self.s.classes)
        return _make_inputs(self.s, self.work, b), shapes, boxes, labels

    def training_keras(self, case: dict) -> dict:
        import keras

        from oid_retinanet.data.targets import anchor_targets
        from oid_retinanet.model.anchors import anchors_for_shape
        from oid_retinanet.model.retinanet import retinanet
        from oid_retinanet.train.trainer import compile_model

        s, b = self.s, case["batch"]
        paths, shapes, boxes, labels = self._training_data(b)
        x = _keras_input(paths, s)
        regression, classification = anchor_targets(anchors_for_shape((s.height, s.width, 3)), shapes, boxes, labels)
        y = {"regression": regression, "classification": classification}
        keras.utils.set_random_seed(s.seed)
        model = retinanet(s.classes, dtype_policy=POLICIES[case["dtype"]])
        compile_model(model)
        losses: list[float] = []

        def step():
            logs = model.train_on_batch(x, y, return_dict=True)
            losses.append(float(logs["loss"]))

        r = timed(step, s.warmup, s.train_repeats, s.cap_s, self.deadline)
        out = {**r, "images_per_s": b / r["median_s"], "loss_first": losses[0], "loss_last": losses[-1],
               "steps": len(losses), "positive_anchors": int((regression[..., 4] == 1).sum())}
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"loss not finite: {losses}")
        return out

    def training_torchvision(self, case: dict) -> dict:
        torch = self.torch
        from torchvision.models.detection import retinanet_resnet50_fpn

        from oid_retinanet.train.trainer import CLIPNORM, LEARNING_RATE

        s, b = self.s, case["batch"]
        paths, shapes, boxes, labels = self._training_data(b)
        images = self.torch_images(paths)
        targets = [{"boxes": torch.as_tensor(bx, dtype=torch.float32), "labels": torch.as_tensor(lb, dtype=torch.int64)}
                   for bx, lb in zip(boxes, labels)]
        torch.manual_seed(s.seed)
        dev = self.device()
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=s.classes,
                                       min_size=s.height, max_size=s.width)
        _freeze_batchnorm(model)
        model = model.to(dev).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
        losses: list[float] = []

        def step():
            imgs = [im.to(dev) for im in images]
            tgts = [{k: v.to(dev) for k, v in t.items()} for t in targets]
            with self.autocast(case["dtype"]):
                loss_dict = model(imgs, tgts)
                loss = sum(loss_dict.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Keras' clipnorm: every gradient tensor scaled to a norm of at most CLIPNORM
            grads = [p.grad for p in params if p.grad is not None]
            norms = torch.stack(torch._foreach_norm(grads))
            scale = torch.clamp(CLIPNORM / (norms + 1e-12), max=1.0)
            torch._foreach_mul_(grads, list(scale.unbind()))
            optimizer.step()
            losses.append(float(loss))  # a synchronisation

        r = timed(step, s.warmup, s.train_repeats, s.cap_s, self.deadline)
        out = {**r, "images_per_s": b / r["median_s"], "loss_first": losses[0], "loss_last": losses[-1],
               "steps": len(losses)}
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"loss not finite: {losses}")
        return out

    def stage4_keras(self, case: dict) -> dict:
        from bench.bench_inference import measure_stage4
        from oid_retinanet.predict.cache import cache_file, read_cache
        from oid_retinanet.predict.inference import image_id

        s, bs = self.s, case["batch_size"]
        n = bs * math.ceil(s.stage4_images / bs)  # full calls only: a smaller last batch would compile anew (jax)
        paths = _make_inputs(s, self.work, n + bs)
        entry = self.keras_models(case["dtype"], _keras_input(paths[:1], s))
        folder = self.work / "stage4" / case["id"].replace("/", "_")
        r = measure_stage4(entry["inference"], paths, folder, min(s.height, s.width), max(s.height, s.width),
                           flip=True, batch_size=bs, workers=case["workers"])
        kept = [read_cache(cache_file(folder / "inference_cache", image_id(p))) for p in paths[bs:]]
        r["detections_per_image"] = float(np.mean([(c.scores[0] > -1).sum() for c in kept]))
        r["candidates_per_image"] = entry["candidates_per_image"]
        r["calibration"] = entry["calibration"]
        r["classification_conv"] = entry["classification_conv"]
        return r


def _freeze_batchnorm(module) -> None:
    """Swap every BatchNorm2d for torchvision's FrozenBatchNorm2d with the same statistics (in place)."""
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    results = Path(spec["results"])

    def emit(record: dict) -> None:
        with open(results, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    worker = Worker(spec)
    try:
        emit({"environment": worker.environment()})
    except Exception as exc:  # the backend cannot start: every case gets the reason
        error = f"{type(exc).__name__}: {exc}"
        for case in spec["cases"]:
            emit({**case, "status": "error", "error": error, "traceback": traceback.format_exc()[-3000:]})
        return 0
    for case in spec["cases"]:
        if worker.deadline - time.time() < worker.s.min_case_s:
            emit({**case, "status": "skipped", "error": "time budget spent"})
            continue
        t = time.perf_counter()
        worker.reset_peak()
        try:
            record = {**case, "status": "ok", **worker.run(case)}
        except Exception as exc:  # out of memory, a backend error: recorded, and the next case runs
            record = {**case, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        record["case_s"] = time.perf_counter() - t
        record["peak_device_mb"] = worker.peak_device_mb()
        emit(record)
        summary = (f"{record.get('images_per_s', 0):.2f} images/s" if record["status"] == "ok"
                   else record["error"][:200])
        print(f"    {case['id']}: {summary} ({record['case_s']:.1f} s)", flush=True)
        gc.collect()
        if worker.torch is not None and worker.torch.cuda.is_available():
            worker.torch.cuda.empty_cache()
    return 0


# ----------------------------------------------------------------------------------------------------------


def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}")
        return items

    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (128x160, 7 classes, 1-2 repeats): a wiring test")
    p.add_argument("--parts", type=_csv(PARTS), default=list(PARTS), help="default: %(default)s")
    p.add_argument("--backends", type=_csv(BACKENDS), default=list(BACKENDS), help="Keras backends (default: "
                   "%(default)s)")
    p.add_argument("--no-reference", action="store_true", help="leave torchvision's RetinaNet out")
    p.add_argument("--no-network-only", action="store_true", help="leave the network-only inference cases out")
    p.add_argument("--dtypes", type=_csv(tuple(POLICIES)), help="default: fp32,bf16")
    p.add_argument("--batches", type=_ints, help="inference batch sizes (default: 1,8; --quick: 1,2)")
    p.add_argument("--train-batch", type=int, help="training batch size (default: 8; --quick: 2)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: 768 1024)")
    p.add_argument("--classes", type=int, help="default: 443")
    p.add_argument("--candidates", type=int, help="score calibration: (anchor, class) pairs above 0.05 per image "
                   "(default: 5000)")
    p.add_argument("--time-budget-s", type=float, help="the whole run's wall-time limit (default: 480; --quick: "
                   "3600)")
    p.add_argument("--allow-cpu", action="store_true", help="measure on the CPU when no GPU is seen (else such "
                   "cases are errors; --quick allows it)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--out-dir", default=str(REPO / "bench_output"), help="bench_gpu.json and bench_gpu.md "
                   "(default: %(default)s)")
    p.add_argument("--work-dir", help="generated images, caches, worker logs (default: OUT_DIR/bench_gpu_work)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    s = QUICK if args.quick else Settings()
    overrides = {"dtypes": args.dtypes and tuple(args.dtypes), "batches": args.batches,
                 "train_batch": args.train_batch, "classes": args.classes, "candidates": args.candidates}
    if args.size:
        overrides.update(height=args.size[0], width=args.size[1])
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    if args.time_budget_s is None:
        args.time_budget_s = 3600.0 if args.quick else 480.0
    result = orchestrate(args, s)
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
