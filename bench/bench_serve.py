"""Benchmark: the web demo under load on loopback, `python -m oid_retinanet.serve` as `make serve` runs it.

A ResNet50 RetinaNet with 443 classes (the released level-1 models' head; weights are the initialisation, so
few boxes pass the 0.05 score filter, as in bench_inference.py) is saved once to bench_output/ and served
at sides --min-side/--max-side with flip TTA. --clients threads (8) send --requests JPEGs (200) of 1024x768
between them, as the page sends them (multipart), each thread on its own keep-alive connection. Reports
the latency percentiles, the errors (any answer but 200, any connection error), the throughput and the
server process's memory: its resident size once started, sampled during the load, and its peak (VmHWM).
Then the slow-client phase: --slow-clients connections send their headers and then one byte a second (each
reconnecting when the server cuts it off) while the same normal load runs again; it reports the normal clients'
latencies and errors beside the first phase's and what the slow ones got (408 after the server's grace time).
Baseline, measured first in this process: the same model and the same answer code on the same files one
by one without HTTP (`prepare_upload`, the model call, `answer`); the ratio is the served throughput over it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_inference import make_images  # noqa: E402
from bench.common import machine_info, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLASSES = 443
BOUNDARY = "----bench-serve"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (`VmRSS`) or its peak (`VmHWM`), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def form_body(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"bench.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def labels_csv(path: Path) -> Path:
    """The released level-1 class list (443 classes) as a labels file for the server."""
    import a00_utils_and_constants as C
    from oid_retinanet.oid.classes import read_class_descriptions, write_class_descriptions
    from oid_retinanet.oid.levels import released_class_list

    write_class_descriptions(str(path), released_class_list(CLASSES, read_class_descriptions(C.CLASS_DESCRIPTIONS_CSV)))
    return path


def baseline(model, labels_path: Path, bodies: list[bytes], sides: tuple[int, int], repeats: int) -> dict:
    """Images/s of the answer code without HTTP: decode and resize, the model call, the boxes, one by one."""
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.serve.service import DetectionService, ModelInfo, prepare_upload

    labels = read_class_descriptions(str(labels_path))
    service = DetectionService(model, labels, ModelInfo("bench", "resnet50", *sides, "bench"))
    service.start()
    n, start = 0, time.perf_counter()
    try:
        for _ in range(repeats):
            for data in bodies:
                image = prepare_upload(data, *sides)
                service.answer(image, service.submit(image, True).result(), flip=True)
                n += 1
    finally:
        service.stop()
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def run_clients(port: int, bodies: list[bytes], requests: int, clients: int) -> tuple[list[float], list[str], float]:
    """Send `requests` images from `clients` threads; (latencies in s of the 200 answers, errors, wall s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for i in counter:  # next() on a shared range iterator is atomic under the GIL
            body = form_body(bodies[i % len(bodies)])
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/detect", body=body,
                             headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                resp = conn.getresponse()
                text = resp.read()
                seconds = time.perf_counter() - t
                with lock:
                    if resp.status == 200:
                        latencies.append(seconds)
                    else:
                        errors.append(f"{resp.status} {text[:100]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def trickle(port: int, stop: threading.Event, outcomes: list[str]) -> None:
    """A slow client until `stop`: headers, then a byte a second; the answer's status (or how it ended) goes to
    `outcomes`, and it starts again."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(b"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                             b"Content-Length: 1000000\r\n\r\n")
                sock.settimeout(1.0)
                while not stop.is_set():
                    sock.sendall(b"x")
                    try:
                        answer = sock.recv(200)
                    except TimeoutError:
                        continue
                    outcomes.append(answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ")
                                    else "closed")
                    break
        except OSError as exc:
            outcomes.append(type(exc).__name__)
            time.sleep(0.5)


def _percentiles(latencies: list[float]) -> dict:
    ms = np.array(latencies) * 1000
    pct = {f"p{q}": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)}
    return {**pct, "mean": float(ms.mean()) if len(ms) else None, "max": float(ms.max()) if len(ms) else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=200, help="requests in all (default: %(default)s)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    p.add_argument("--min-side", type=int, default=256, help="resize: short side (default: %(default)s)")
    p.add_argument("--max-side", type=int, default=320, help="resize: long side at most (default: %(default)s)")
    p.add_argument("--slow-clients", type=int, default=16, help="trickling clients of the second phase")
    p.add_argument("--baseline-repeats", type=int, default=3, help="passes over the images for the baseline")
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)
    out = Path(args.out_dir).resolve()
    work = out / "serve"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sides = (args.min_side, args.max_side)

    bodies = [Path(f).read_bytes() for f in make_images(out / "inference_images", 4)]
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox

    weights = work / f"resnet50_{CLASSES}_classes_init.keras"
    model = retinanet_bbox(retinanet(CLASSES))
    model.save(weights)  # every run: a file kept from an earlier version of the model code would be stale
    labels = labels_csv(work / "labels.csv")
    base = baseline(model, labels, bodies, sides, args.baseline_repeats)
    print(f"baseline (in process, no HTTP): {base['images_per_s']:.2f} images/s", flush=True)
    del model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "oid_retinanet.serve", "--weights", str(weights), "--labels",
                               str(labels), "--port", str(port), "--min-side", str(sides[0]),
                               "--max-side", str(sides[1])], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    samples: list[float] = []
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}; see {work / 'server.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        run_clients(port, bodies[:1], 1, 1)  # one request first: allocations that happen once
        rss_started = rss_mb(server.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                samples.append(rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        latencies, errors, wall = run_clients(port, bodies, args.requests, args.clients)
        stop.set()
        sampler.join()
        slow_stop, outcomes = threading.Event(), []
        slow = [threading.Thread(target=trickle, args=(port, slow_stop, outcomes), daemon=True)
                for _ in range(args.slow_clients)]
        for t in slow:
            t.start()
        time.sleep(2)  # every slow client connected and trickling
        slow_latencies, slow_errors, slow_wall = run_clients(port, bodies, args.requests, args.clients)
        slow_stop.set()
        for t in slow:
            t.join(5)
        peak = rss_mb(server.pid, "VmHWM")
        rss_end = rss_mb(server.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/health")
        health = json.loads(conn.getresponse().read())
    finally:
        server.terminate()
        server.wait(60)
        log.close()

    pct = _percentiles(latencies)
    served = len(latencies) / wall
    slow_pct = _percentiles(slow_latencies)
    result = {"requests": args.requests, "clients": args.clients, "ok": len(latencies), "errors": len(errors),
              "error_examples": errors[:5], "latency_ms": pct,
              "slow_client_phase": {"slow_clients": args.slow_clients, "ok": len(slow_latencies),
                                    "errors": len(slow_errors), "error_examples": slow_errors[:5],
                                    "latency_ms": slow_pct, "requests_per_s": len(slow_latencies) / slow_wall,
                                    "slow_client_answers": {k: outcomes.count(k) for k in sorted(set(outcomes))},
                                    "p50_ratio_over_first_phase": slow_pct["p50"] / pct["p50"]},
              "wall_s": wall, "requests_per_s": served, "image_size": [768, 1024], "sides": list(sides),
              "classes": CLASSES, "flip": True, "model_calls": health["load"]["model_calls"],
              "server_rss_mb": {"after_start": rss_started, "max_sampled": max(samples, default=rss_started),
                                "peak_vmhwm": peak, "end": rss_end},
              "baseline_in_process": base, "ratio_served_over_in_process": served / base["images_per_s"],
              "machine": machine_info()}
    write_result(args.out_dir, "bench_serve", result)
    print(f"serve load test ({args.requests} requests, {args.clients} clients, sides {sides[0]}/{sides[1]}, flip TTA):"
          f" p50 {pct['p50']:.0f} ms, p95 {pct['p95']:.0f} ms, p99 {pct['p99']:.0f} ms, {len(errors)} errors, "
          f"{served:.2f} requests/s ({result['ratio_served_over_in_process']:.2f}x the in-process "
          f"{base['images_per_s']:.2f} images/s, {result['model_calls']} model calls); server memory "
          f"{rss_started:.0f} MB after start, peak {peak:.0f} MB, {rss_end:.0f} MB at the end")
    phase = result["slow_client_phase"]
    print(f"with {args.slow_clients} slow clients trickling: p50 {slow_pct['p50']:.0f} ms, p95 {slow_pct['p95']:.0f} "
          f"ms, {len(slow_errors)} errors ({phase['p50_ratio_over_first_phase']:.2f}x the p50 without them); the slow "
          f"clients got {phase['slow_client_answers']}")
    return 0 if not errors and not slow_errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
