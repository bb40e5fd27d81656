"""The web demo's API (oid_retinanet/serve), served by uvicorn on loopback with a tiny random-weight model.

The model is a ResNet50 RetinaNet with 3 classes (Apple, Dog, Man: classes with parents in the 2018
hierarchy), random weights and a classification prior of 0.5 so that boxes pass the filters; images are
resized to 128/160. Rules:
- answers against the pipeline run on the same file with the same model object: stage 4 (`predict_images`
  into a cache, `write_mirror_merged_csv`) and stage 5 (`expand_csv --only-new`), CSVs read with the csv
  module and str.split: the same boxes, exactly (the API gives the CSV's numbers; same input, same model call
  shape, same process);
- pixel boxes: the normalised box times the upload's width and height, rounded to 2 decimals (hand rule);
- decoding an upload: pixel for pixel what `read_image_bgr` reads from the same file, for each image mode;
- bad input: the status code and the message, and the server answering a good request afterwards;
- load: with a model call held open, requests past the admission limit get 503 at once and the admitted ones
  finish; the held requests share model calls;
- one image answered in model calls of different batch sizes, or by another process: the same detections within
  the model's tolerance (`assert_same_answer`), not bit for bit: CPU kernels block a batch of 2 differently from a
  batch of 1 (scores differed by ~6e-8 on one machine, which moves the CSV's 6th decimal).
The helpers here (model, server thread, requests) are imported by test_serve_browser.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import functools
import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import uvicorn
from conftest import REPO
from PIL import Image

from oid_retinanet.data.preprocess import read_image_bgr
from oid_retinanet.oid.classes import ClassList
from oid_retinanet.predict.ensemble import write_mirror_merged_csv
from oid_retinanet.predict.expand import expand_csv, load_parent_table
from oid_retinanet.predict.inference import predict_images
from oid_retinanet.resources import resource_path
from oid_retinanet.serve import __main__ as serve_main
from oid_retinanet.serve.app import JSONRefusalsH11Protocol, Limits, create_app
from oid_retinanet.serve.service import DetectionService, ModelInfo, decode_image, load_parent_expansion

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

LABELS = ClassList(("/m/014j1m", "/m/0bt9lr", "/m/04yx4"), ("Apple", "Dog", "Man"), source="test labels")
SIDES = (128, 160)
CLASSES_500 = resource_path("challenge-2018-class-descriptions-500.csv")
HIERARCHY = resource_path("bbox_labels_600_hierarchy.json")
CLASSES_V4 = resource_path("class-descriptions-boxable.csv")


# ---------------------------------------------------------------------------------------------------------
# Helpers shared with test_serve_browser.py


@functools.cache
def tiny_model():
    """ResNet50 RetinaNet inference model, 3 classes, random weights, prior 0.5 (scores near 0.5), 20 boxes."""
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox

    keras.utils.set_random_seed(17)
    return retinanet_bbox(retinanet(len(LABELS), prior_probability=0.5), max_detections=20)


def make_service(model=None, max_batch: int = 4) -> DetectionService:
    """A service for the tiny model (or `model`) at sides 128/160, with the stage-5 2018 parents."""
    parents = load_parent_expansion(LABELS, CLASSES_500, HIERARCHY, CLASSES_V4)
    info = ModelInfo("tiny-random.keras", "resnet50", *SIDES, LABELS.source)
    return DetectionService(tiny_model() if model is None else model, LABELS, info, parents, max_batch=max_batch)


class ServerThread:
    """uvicorn serving `app` on a free loopback port, in a background thread (a context manager)."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, http=JSONRefusalsH11Protocol, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def request(port: int, method: str, path: str, body=None, headers: dict | None = None,
            timeout: float = 120, **kwargs) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one HTTP request on loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, **kwargs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (file name or None for a plain field, data, content type)."""
    boundary = "----oid-retinanet-test-boundary"
    parts = []
    for name, (filename, data, ctype) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode()
                     + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def detect(port: int, data: bytes, query: str = "", as_form: bool = True) -> tuple[int, dict]:
    """POST an image to /api/detect (as the page does, or as the raw body); (status, JSON answer)."""
    if as_form:
        body, ctype = multipart({"image": ("photo.jpg", data, "image/jpeg")})
    else:
        body, ctype = data, "image/jpeg"
    status, _, text = request(port, "POST", "/api/detect" + query, body, {"Content-Type": ctype})
    return status, json.loads(text)


SCORE_ATOL = 1e-5  # the model fixture's score tolerance (test_model.py)
BOX_ATOL = 1.01e-4  # one unit of the CSV's 4th decimal, which a ~1e-7 difference can move


def assert_same_answer(got: dict, expected: dict) -> None:
    """The same detections and parents, each matched to one of the other answer's with the same mid, score within
    SCORE_ATOL and normalised box within BOX_ATOL (pixel boxes within that times the side plus the 0.01 rounding
    step); their order may differ only among scores within SCORE_ATOL."""
    for key in ("detections", "parents"):
        a, b = got[key], expected[key]
        assert len(a) == len(b), (key, len(a), len(b))
        used = [False] * len(b)
        for e in a:
            match = next((j for j, f in enumerate(b) if not used[j] and f["mid"] == e["mid"]
                          and f["label"] == e["label"] and abs(f["score"] - e["score"]) <= SCORE_ATOL
                          and np.allclose(f["box"], e["box"], rtol=0, atol=BOX_ATOL)
                          and np.allclose(f["box_px"], e["box_px"], rtol=0,
                                          atol=BOX_ATOL * max(got["image"]["width"], got["image"]["height"]) + 0.011)),
                         None)
            assert match is not None, (key, e, b)
            used[match] = True


def make_photo(path: Path, width: int = 400, height: int = 300) -> bytes:
    """A deterministic JPEG with a gradient and a few shapes; returns its bytes."""
    import cv2

    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], axis=2)
    img = img.astype(np.uint8)
    for _ in range(5):
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, centre, int(rng.integers(15, 80)), colour, -1)
    ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    path.write_bytes(encoded.tobytes())
    return encoded.tobytes()


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def service():
    svc = make_service()
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def server(service):
    with ServerThread(create_app(service, Limits())) as srv:
        yield srv


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("serve_photo") / "photo_400x300.jpg"
    return path, make_photo(path)


# ---------------------------------------------------------------------------------------------------------
# Answers against the pipeline


def _csv_boxes(path: Path) -> dict[str, list[tuple]]:
    """ImageId -> sorted (mid, score, x1, y1, x2, y2) of a predictions CSV, read with csv and str.split."""
    out = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"]
    for image_id, string in rows[1:]:
        tokens = string.split()
        out[image_id] = sorted((tokens[i], *map(float, tokens[i + 1:i + 6])) for i in range(0, len(tokens), 6))
    return out


def _api_boxes(entries: list[dict]) -> list[tuple]:
    return sorted((e["mid"], e["score"], *e["box"]) for e in entries)


@pytest.mark.parametrize("flip", [True, False])
def test_answer_is_what_stages_4_and_5_write(server, photo, tmp_path, flip):
    path, data = photo
    status, answer = detect(server.port, data, f"?flip={str(flip).lower()}")
    assert status == 200, answer
    status_raw, answer_raw = detect(server.port, data, f"?flip={str(flip).lower()}", as_form=False)
    assert status_raw == 200 and answer_raw["detections"] == answer["detections"]

    predict_images(tiny_model(), [path], tmp_path / "cache", *SIDES, flip=flip, progress=False)
    stage4 = tmp_path / "stage4.csv"
    write_mirror_merged_csv(tmp_path / "cache", stage4, LABELS, workers=1)
    stage5 = tmp_path / "stage5_only_new.csv"
    table = load_parent_table(CLASSES_500, HIERARCHY, CLASSES_V4)
    expand_csv(str(stage4), str(stage5), table, iou_thr=0.75, plus_one=True, return_only_new=True, progress=False)

    expected = _csv_boxes(stage4)[path.stem]
    assert len(expected) > 3, "the tiny model should find boxes"
    assert _api_boxes(answer["detections"]) == expected
    expected_parents = _csv_boxes(stage5)[path.stem]
    assert len(expected_parents) > 0, "Apple, Dog and Man have parents"
    assert _api_boxes(answer["parents"]) == expected_parents

    names = dict(zip(LABELS.mids, LABELS.names))
    parent_names = {"/m/02xwb": "Fruit", "/m/01lrl": "Carnivore", "/m/0jbk": "Animal", "/m/01g317": "Person"}
    for e in answer["detections"]:
        assert LABELS.mids[e["label"]] == e["mid"] and e["name"] == names[e["mid"]]
    for e in answer["parents"]:
        assert e["label"] is None and e["name"] == parent_names[e["mid"]]
    for e in answer["detections"] + answer["parents"]:
        x1, y1, x2, y2 = e["box"]
        assert e["box_px"] == [round(x1 * 400, 2), round(y1 * 300, 2), round(x2 * 400, 2), round(y2 * 300, 2)]
    scores = [e["score"] for e in answer["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["image"] == {"width": 400, "height": 300, "format": "JPEG", "input": [120, 160]}
    assert answer["flip"] is flip
    assert answer["timing_ms"]["model"] > 0 and answer["timing_ms"]["total"] >= answer["timing_ms"]["model"]

    status, limited = detect(server.port, data, f"?flip={str(flip).lower()}&min_score=0.5&parents=false")
    assert status == 200 and limited["parents"] == []
    assert limited["detections"] == [e for e in answer["detections"] if e["score"] >= 0.5]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16"])
def test_upload_reads_as_read_image_bgr(tmp_path, mode):
    rng = np.random.default_rng(3)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (23, 31), dtype=np.uint16))
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 255, (23, 31, 3), dtype=np.uint8)).convert("P")
    else:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 255, (23, 31, channels), dtype=np.uint8)
        img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
    assert img.mode == mode
    data = _png(img)
    path = tmp_path / "image.png"
    path.write_bytes(data)
    bgr, fmt = decode_image(data)
    assert fmt == "PNG"
    np.testing.assert_array_equal(bgr, read_image_bgr(path))


# ---------------------------------------------------------------------------------------------------------
# Bad input


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height grayscale pixels (its data would inflate to that)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\0" * (width + 1)
    compressor = zlib.compressobj(9)
    idat = compressor.compress(row * 64) + compressor.flush()  # the first rows only: enough for the header check
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _chunks(total: int, size: int = 1 << 20):
    block = b"\xff" * size
    for _ in range(total // size):
        yield block


def test_bad_input_gets_a_clear_status_and_the_server_keeps_serving(server, photo):
    _, data = photo
    port = server.port
    fifty_mp = _png(Image.new("L", (10_000, 5_000)))
    assert len(fifty_mp) < 20 << 20

    cases = [
        ("not an image", b"%PDF-1.4 not an image at all", "image/jpeg", 415, "not an image"),
        ("truncated JPEG", data[: len(data) // 2], "image/jpeg", 422, "truncated"),
        ("empty request", b"", "image/jpeg", 400, "empty request"),
        ("50 megapixels", fifty_mp, "image/png", 422, "50.0 megapixels"),
        ("decompression bomb", _bomb_png(100_000, 100_000), "image/png", 422, "decompression bomb"),
        ("bomb under PIL's own limit", _bomb_png(9_000, 9_000), "image/png", 422, "81.0 megapixels"),
    ]
    for name, body, ctype, status, words in cases:
        got, headers, text = request(port, "POST", "/api/detect", body, {"Content-Type": ctype})
        assert (got, headers["content-type"]) == (status, "application/json"), (name, text)
        assert words in json.loads(text)["detail"], (name, text)

    form, ctype = multipart({"note": (None, b"hello", "text/plain")})
    got, _, text = request(port, "POST", "/api/detect", form, {"Content-Type": ctype})
    assert got == 400 and "field \"image\"" in json.loads(text)["detail"]
    form, ctype = multipart({"image": ("a.jpg", data, "image/jpeg"), "other": ("b.jpg", data, "image/jpeg")})
    got, _, text = request(port, "POST", "/api/detect", form, {"Content-Type": ctype})
    assert got == 400 and "Too many files" in json.loads(text)["detail"]
    got, _, text = request(port, "POST", "/api/detect?min_score=2", data, {"Content-Type": "image/jpeg"})
    assert got == 422

    # 100 MB: refused from its Content-Length, and counted while streaming when it has none; the client sends
    # it whole (http.client reads the answer only then) and still gets the 413
    too_large = "larger than this server's limit of 20 MB"
    got, _, text = request(port, "POST", "/api/detect", _chunks(100 << 20),
                           {"Content-Type": "image/jpeg", "Content-Length": str(100 << 20)})
    assert got == 413 and too_large in json.loads(text)["detail"]
    got, _, text = request(port, "POST", "/api/detect", _chunks(100 << 20), {"Content-Type": "image/jpeg"},
                           encode_chunked=True)
    assert got == 413 and too_large in json.loads(text)["detail"]
    # a client that waits for 100-continue never has to send the body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/detect HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 104857600\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413 ")

    got, _, text = request(port, "GET", "/api/health")
    health = json.loads(text)
    assert got == 200 and health["status"] == "ok" and health["load"]["in_progress"] == 0
    status, answer = detect(port, data)
    assert status == 200 and answer["detections"]


class HeldModel:
    """The tiny model with every call held until `release` is set; counts the images in the held calls."""

    def __init__(self, model):
        self.model = model
        self.release = threading.Event()
        self.images_in_calls = 0

    def predict_on_batch(self, x):
        self.images_in_calls += len(x) // 2  # flip: two rows an image
        self.release.wait(60)
        return self.model.predict_on_batch(x)


def test_many_requests_at_once_are_refused_or_queued_and_batched(photo, service):
    _, data = photo
    held = HeldModel(tiny_model())
    svc = make_service(held, max_batch=2)
    svc.start(warmup=False)
    app = create_app(svc, Limits(max_pending=3))
    try:
        with ServerThread(app) as srv, concurrent.futures.ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(detect, srv.port, data) for _ in range(10)]
            # 7 answered at once; the 3 admitted ones are in the held model call or queued behind it
            deadline = time.monotonic() + 60
            while not (sum(f.done() for f in futures) == 7 and held.images_in_calls + svc.worker.waiting == 3):
                assert time.monotonic() < deadline, (sum(f.done() for f in futures), held.images_in_calls)
                time.sleep(0.02)
            answered_first = [f for f in futures if f.done()]
            refused = [f.result() for f in answered_first]
            assert all(status == 503 and "busy" in body["detail"] for status, body in refused), refused
            assert app.state.admission.in_progress == 3
            held.release.set()
            answers = [f.result(timeout=60) for f in futures if f not in answered_first]
    finally:
        held.release.set()
        svc.stop()
    assert [status for status, _ in answers] == [200] * 3
    # one call for the first request (with a second one if it was already waiting), one for the rest
    assert svc.worker.calls == 2
    assert sorted(body["batch_images"] for _, body in answers) == [1, 2, 2]
    for _, body in answers[1:]:
        assert_same_answer(body, answers[0][1])


@pytest.mark.parametrize("budget_images, expected_at_once", [(1.5, 1), (4, 3)])
def test_decodes_share_a_memory_budget(photo, service, monkeypatch, budget_images, expected_at_once):
    """Three uploads at once with decode workers to spare: a budget of 1.5 images' estimated decode memory lets
    one decode at a time, one of 4 images all three."""
    import oid_retinanet.serve.app as app_module
    from oid_retinanet.serve.service import decode_cost

    _, data = photo
    running, most = 0, 0
    lock = threading.Lock()
    real = app_module.prepare_upload

    def counted(*args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.5)
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(app_module, "prepare_upload", counted)
    budget_mb = budget_images * decode_cost(data) / 2**20
    app = create_app(service, Limits(decode_workers=4, decode_memory_mb=budget_mb))
    with ServerThread(app) as srv, concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: detect(srv.port, data), range(3)))
    assert [status for status, _ in answers] == [200] * 3 and most == expected_at_once, (answers, most)
    assert app.state.decode_memory.used == 0


@pytest.mark.parametrize("head, status, detail", [
    (b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n", 431,
     "request header fields too large"),
    (b"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 400, "malformed HTTP request"),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request")])
def test_what_the_server_refuses_before_the_app_is_json(server, head, status, detail):
    """Before: a connection reset for a 1 MB header, plain text for the others."""
    def send(sock) -> None:
        with contextlib.suppress(OSError):  # the server may close before the last bytes are sent
            sock.sendall(head)

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sender = threading.Thread(target=send, args=(sock,), daemon=True)
        sender.start()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sender.join(10)
    first, _, body = answer.partition(b"\r\n\r\n")
    assert first.startswith(f"HTTP/1.1 {status} ".encode()) and b"application/json" in first, answer[:300]
    assert json.loads(body)["detail"].startswith(detail)


def _trickle(port: int, stop: threading.Event, declared: int = 100_000) -> tuple[int | None, bool]:
    """A client that sends its headers, then one byte every 0.1 s until answered or stopped: (status, whether
    the server closed the connection after answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {declared}\r\n\r\n".encode())
        sock.settimeout(0.1)
        answer = b""
        for _ in range(declared):
            if stop.is_set():
                return None, False
            try:
                sock.sendall(b"x")
            except OSError:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                break
        sock.settimeout(10)
        while True:  # the rest of the answer, then the server's close (b"")
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            answer += chunk
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
        return status, True


def test_slow_uploads_hold_no_slot_and_are_cut_off(photo, service):
    """Clients trickling their bodies (a byte every 0.1 s) while normal ones upload: the normal ones are
    answered (before, the trickling ones held every slot and the others got 503); each slow one gets 408 once
    its average rate is under the minimum after the grace time, and its connection is closed."""
    _, data = photo
    app = create_app(service, Limits(max_pending=2, body_grace_seconds=3, min_body_rate=1000, body_idle_seconds=5))
    stop = threading.Event()
    with ServerThread(app) as srv, concurrent.futures.ThreadPoolExecutor(6) as pool:
        slow = [pool.submit(_trickle, srv.port, stop) for _ in range(4)]
        time.sleep(0.5)
        try:
            assert app.state.receiving.in_progress == 4 and app.state.admission.in_progress == 0
            answers = [detect(srv.port, data) for _ in range(2)]
            assert [status for status, _ in answers] == [200, 200], answers
        finally:
            results = [f.result(timeout=30) for f in slow]
            stop.set()
    assert results == [(408, True)] * 4, results
    assert app.state.receiving.in_progress == 0


@pytest.mark.parametrize("content_type, partial", [
    ("image/jpeg", b"x" * 10),
    ("multipart/form-data; boundary=xx",
     b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\nabc')])
def test_a_client_leaving_mid_upload_is_one_log_line(service, caplog, content_type, partial):
    """Before: an ERROR with a ClientDisconnect traceback from the app, and another from uvicorn."""
    with ServerThread(create_app(service, Limits())) as srv, caplog.at_level("INFO", logger="oid_retinanet"):
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(f"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: 1000\r\n\r\n".encode() + partial)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if "disconnected" in r.getMessage()]:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
        status, _ = detect(srv.port, b"not an image")
    records = [r for r in caplog.records if r.name.startswith("oid_retinanet.serve")]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("INFO", "client disconnected during its upload: POST /api/detect")] and status == 415


# ---------------------------------------------------------------------------------------------------------
# The command line (`make serve`)


def test_model_files_come_from_flags_environment_or_the_demo(tmp_path, monkeypatch):
    monkeypatch.delenv("OID_SERVE_WEIGHTS", raising=False)
    monkeypatch.delenv("OID_SERVE_LABELS", raising=False)
    summary = tmp_path / "demo_output" / "summary.json"
    summary.parent.mkdir()
    (summary.parent / "model.keras").write_bytes(b"")
    summary.write_text(json.dumps({"stages": [], "serve_weights": "model.keras"}))
    resolve = serve_main.resolve_model_files
    assert resolve(None, None, summary) == (str(summary.parent / "model.keras"), None, str(summary))
    assert resolve("w.h5", None, summary) == ("w.h5", None, "--weights")
    monkeypatch.setenv("OID_SERVE_WEIGHTS", "env.h5")
    monkeypatch.setenv("OID_SERVE_LABELS", "env.csv")
    assert resolve(None, None, summary) == ("env.h5", "env.csv", "OID_SERVE_WEIGHTS")
    assert resolve("w.h5", "l.csv", summary) == ("w.h5", "l.csv", "--weights")


def test_without_a_model_the_server_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OID_SERVE_WEIGHTS", raising=False)
    assert serve_main.main(["--demo-summary", str(tmp_path / "summary.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make demo" in err[0] and "--weights" in err[0], err
    (tmp_path / "summary.json").write_text(json.dumps({"stages": []}))
    assert serve_main.main(["--demo-summary", str(tmp_path / "summary.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no serve_weights" in err[0] and "make demo" in err[0], err


def test_python_m_serve_serves_the_demo_model(server, photo, tmp_path):
    """`python -m oid_retinanet.serve --no-warmup` on a saved model named by a demo summary, port from PORT, its
    classes and sides from the model's card (no flag): the same answer as the in-process server for the same
    weights; Ctrl-C stops it cleanly."""
    from oid_retinanet.model.card import ModelCard, save_model

    _, data = photo
    save_model(tiny_model(), tmp_path / "tiny.keras", ModelCard("resnet50", len(LABELS), classes=zip(
        LABELS.mids, LABELS.names), min_side=SIDES[0], max_side=SIDES[1]))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"serve_weights": str(tmp_path / "tiny.keras")}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("OID_SERVE_WEIGHTS", "OID_SERVE_LABELS")}
    env["PORT"] = str(port)
    proc = subprocess.Popen([sys.executable, "-m", "oid_retinanet.serve", "--demo-summary", str(summary),
                             "--no-warmup"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                status, _, text = request(port, "GET", "/api/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        health = json.loads(text)
        assert status == 200 and health["model"]["name"] == "tiny.keras" and health["model"]["classes"] == 3
        assert health["model"]["labels"] == "tiny.keras (its card)"  # names, never the server's paths
        # DNS rebinding: a Host that is not the bound address or a loopback name is refused
        for host, expected in ((f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200), ("evil.example", 400),
                               (f"evil.example:{port}", 400), ("", 400)):
            status, headers, text = request(port, "GET", "/api/health", headers={"Host": host})
            assert status == expected, (host, status, text)
            if expected == 400:
                assert headers["content-type"] == "application/json" and "--allowed-host" in json.loads(text)["detail"]
        assert (health["model"]["min_side"], health["model"]["max_side"]) == SIDES
        status, answer = detect(port, data)
        assert status == 200
        _, expected = detect(server.port, data)
        assert_same_answer(answer, expected)  # another process: same shapes, but threads may differ
        status, headers, page = request(port, "GET", "/")
        assert status == 200 and b'id="overlay"' in page and "default-src 'self'" in headers["content-security-policy"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out
