"""The web demo's FastAPI application: the page, the detection API and the health endpoint.

`POST /api/detect` takes an image as the file field `image` of a multipart form (what the page sends) or as
the raw request body (`curl --data-binary @photo.jpg`). Query parameters: `flip` (flip TTA, default true),
`parents` (add the parent classes, default true), `min_score` (drop boxes scoring lower, default 0). The
answer:

    {"image": {"width", "height", "format", "input": [h, w] of the network input},
     "flip": bool,
     "detections": [{"label": model output index, "mid", "name", "score",
                     "box": [x1, y1, x2, y2] normalised to [0, 1], "box_px": the same in the upload's pixels}],
     "parents": [the same, "label": null],
     "timing_ms": {"decode", "queue", "model", "boxes", "total"}, "batch_images": images in that model call}

with the boxes sorted by score, highest first. One image gets the same answer within the model's tolerance
(scores within 1e-5) whether its model call held it alone or with other requests' images, not bit for bit:
CPU kernels block a batch of 2 differently from a batch of 1, which can move the CSV's last digit.

Refusals are JSON `{"detail": message}`: 400 an empty request or a form without a file, 413 an upload over the
byte limit (refused from its Content-Length, or counted while it streams, never read whole), 415 not an image, 422
an image over the pixel limit, truncated or damaged, 503 too many requests in progress (with Retry-After). `GET
/api/health` describes the model and the load. Uploads are held in memory (multipart parts over 1 MB spool to an
anonymous temporary file); the client's file name is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE as MAX_HEADER_BYTES
from uvicorn.protocols.http.h11_impl import H11Protocol

from oid_retinanet.serve.service import (
    DEFAULT_MAX_PIXELS,
    DetectionService,
    RequestError,
    decode_cost,
    prepare_upload,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PENDING = 16
DEFAULT_DECODE_WORKERS = 2
DEFAULT_DECODE_MEMORY_MB = 1024.0
# The page loads only its own files; the uploaded image is shown from a blob: URL.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Limits:
    """What one request and the server as a whole may take.

    max_upload_bytes: request body size. max_pixels: image size, from its header. max_pending: requests in
    progress at once once their upload has arrived (decoding, waiting for or in the model); more get 503.
    max_receiving: uploads arriving at once (more get 503). A body that stalls for body_idle_seconds, or that
    arrives slower than min_body_rate bytes/s on average once body_grace_seconds have passed, gets 408 and its
    connection closed: a client trickling bytes holds no slot for long. decode_workers: uploads decoded at once.
    decode_memory_mb: what the uploads being decoded may take together, estimated from their headers
    (service.DECODE_BYTES_PER_PIXEL; a 36-megapixel PNG raised the peak by 0.53 GB); an upload waits for its
    share, and one larger than the whole budget waits until it decodes alone.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pending: int = DEFAULT_MAX_PENDING
    decode_workers: int = DEFAULT_DECODE_WORKERS
    max_receiving: int = 4 * DEFAULT_MAX_PENDING
    decode_memory_mb: float = DEFAULT_DECODE_MEMORY_MB
    body_idle_seconds: float = 10.0
    body_grace_seconds: float = 10.0
    min_body_rate: float = 16 * 1024


class UploadTooLarge(HTTPException):
    """The request body passed the byte limit while it was streaming in."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large_message(limit))


class UploadTooSlow(HTTPException):
    """The request body stalled or trickled; the answer closes the connection (the rest is never read)."""

    def __init__(self, why: str):
        super().__init__(408, f"upload too slow: {why}", headers={"Connection": "close"})


def _too_large_message(limit: int) -> str:
    return f"upload larger than this server's limit of {limit / 2**20:g} MB"


class UploadLimit:
    """ASGI middleware: refuse request bodies over the byte limit without reading them whole, and bodies that
    stall or trickle (Limits: body_idle_seconds, body_grace_seconds, min_body_rate).

    A declared Content-Length over the limit is answered 413 at once (a client that sent `Expect:
    100-continue` then never sends the body); a body without one is counted as it streams and the read that
    passes the limit raises UploadTooLarge (413). Either way uvicorn reads and discards the rest of the body
    after the answer, without keeping it, so the client that sends it whole still reads the 413 and the
    connection stays usable. A slow body raises UploadTooSlow (408, connection closed).
    """

    def __init__(self, app, limits: Limits):
        self.app = app
        self.limit = limits.max_upload_bytes
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            status, detail = (413, _too_large_message(self.limit)) if length.isdigit() else \
                (400, "bad Content-Length header")
            await JSONResponse({"detail": detail}, status)(scope, receive, send)
            return
        received, started, limits, arrived = 0, time.monotonic(), self.limits, False

        async def counted_receive():
            nonlocal received, arrived
            if arrived:  # the body is complete: a later receive waits for the disconnect, however long
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), limits.body_idle_seconds)
            except TimeoutError:
                raise UploadTooSlow(f"no data for {limits.body_idle_seconds:g} s") from None
            if message["type"] == "http.request":
                arrived = not message.get("more_body")
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge(self.limit)
                elapsed = time.monotonic() - started
                if (message.get("more_body") and elapsed > limits.body_grace_seconds
                        and received < limits.min_body_rate * elapsed):
                    raise UploadTooSlow(f"{received} bytes in {elapsed:.0f} s, under this server's minimum of "
                                        f"{limits.min_body_rate / 1024:g} KB/s")
            return message

        await self.app(scope, counted_receive, send)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts(bound: str, names: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host header names a server bound to `bound` answers to: the address itself, the loopback names and
    `names`; None (any) for a server bound to all interfaces without names given."""
    if bound in ("0.0.0.0", "::", "") and not names:
        return None
    return frozenset({bound.lower(), *LOOPBACK_NAMES, *(n.lower() for n in names)})


class HostCheck:
    """ASGI middleware: refuse (400, JSON) a request whose Host header names another server. A page on another
    site that resolves its own name to 127.0.0.1 (DNS rebinding) would otherwise reach the local demo."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").strip().lower()
            name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 \
                else host
            if name not in self.allowed:
                await JSONResponse({"detail": f"Host {host!r} is not a name this server answers to (serve "
                                              "--allowed-host NAME adds one)"}, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class MemoryBudget:
    """Bytes that the requests holding a share may use together; `take(n)` waits until n fit (event-loop side).
    A request larger than the whole budget waits until it is alone."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def take(self, n: int):
        n = min(n, self.total)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + n <= self.total)
            self.used += n
        try:
            yield
        finally:
            async with self._changed:
                self.used -= n
                self._changed.notify_all()


class Admission:
    """Counts the requests in progress and refuses those past `capacity` (event-loop side, no lock needed)."""

    def __init__(self, capacity: int, what: str = "requests in progress"):
        self.capacity = capacity
        self.what = what
        self.in_progress = 0
        self.refused = 0

    @contextlib.contextmanager
    def slot(self):
        if self.in_progress >= self.capacity:
            self.refused += 1
            raise RequestError(503, f"busy: {self.in_progress} {self.what}, the most this server takes at once; "
                                    "retry in a moment", headers={"Retry-After": "1"})
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


async def read_upload(request: Request) -> bytes:
    """The uploaded file's bytes: the multipart field `image` (or the form's only file), or the raw body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("image")
            if upload is None:
                files = [v for v in form.values() if isinstance(v, UploadFile)]
                upload = files[0] if len(files) == 1 else None
            if not isinstance(upload, UploadFile):
                raise RequestError(400, 'no image in the form: send the file as the field "image"')
            data = await upload.read()
        finally:
            await form.close()
    else:
        data = await request.body()
    if not data:
        raise RequestError(400, 'empty request: send an image file as the multipart field "image" or as the '
                                'request body')
    return data


def create_app(service: DetectionService, limits: Limits = Limits(), hosts: frozenset[str] | None = None
               ) -> FastAPI:
    """The application serving `service` (started by the app's lifespan if it is not yet); `hosts`: the Host
    header names it answers to (`allowed_hosts`; None: any)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(service.start)
        yield

    # no Swagger page: it loads its scripts from a CDN, which the page's machine may not reach
    app = FastAPI(title="oid-retinanet web demo", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.add_middleware(UploadLimit, limits=limits)
    if hosts is not None:
        app.add_middleware(HostCheck, allowed=hosts)
    admission, receiving = Admission(limits.max_pending), Admission(limits.max_receiving, "uploads arriving")
    decoders = anyio.CapacityLimiter(limits.decode_workers)
    decode_memory = MemoryBudget(int(limits.decode_memory_mb * 2**20))
    app.state.service, app.state.limits, app.state.admission = service, limits, admission
    app.state.receiving, app.state.decode_memory = receiving, decode_memory

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def left(request: Request, exc: ClientDisconnect) -> Response:
        # nobody to answer: one line, not a traceback (a closed tab, a dropped connection)
        log.info("client disconnected during its upload: %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed: %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health")
    async def health() -> JSONResponse:
        ok = service.ready
        body = {"status": "ok" if ok else "unavailable", "model": service.describe(),
                "limits": {"max_upload_mb": limits.max_upload_bytes / 2**20, "max_megapixels": limits.max_pixels / 1e6,
                           "max_pending": limits.max_pending, "max_batch": service.worker.max_batch,
                           "decode_memory_mb": limits.decode_memory_mb},
                "load": {"in_progress": admission.in_progress, "receiving": receiving.in_progress,
                         "decode_memory_mb": round(decode_memory.used / 2**20, 1),
                         "waiting_for_model": service.worker.waiting, "refused": admission.refused + receiving.refused,
                         "model_calls": service.worker.calls}}
        return JSONResponse(body, 200 if ok else 503)

    @app.post("/api/detect")
    async def detect(request: Request, flip: bool = True, parents: bool = True,
                     min_score: float = Query(0.0, ge=0.0, le=1.0)) -> JSONResponse:
        start = time.perf_counter()
        if not service.ready:
            raise RequestError(503, "the model is not ready", headers={"Retry-After": "1"})
        with receiving.slot():  # a slot for the model's work only once the upload has arrived
            data = await read_upload(request)
        with admission.slot():
            async with decode_memory.take(decode_cost(data)):
                image = await anyio.to_thread.run_sync(prepare_upload, data, service.min_side, service.max_side,
                                                       limits.max_pixels, limiter=decoders)
            del data
            output = await asyncio.wrap_future(service.submit(image, flip))
            result = await anyio.to_thread.run_sync(service.answer, image, output, flip, parents, min_score)
        result["timing_ms"]["total"] = round(1000 * (time.perf_counter() - start), 1)
        return JSONResponse(result)

    return app


class JSONRefusalsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but what it refuses before the app sees a request (a malformed request line or
    header, `Content-Length: abc`, a header block over h11's 16 KB) is answered in the API's JSON, 431 for an
    oversized header, and the connection is closed after the client has had a moment to read the answer: closing
    at once with its unread bytes pending makes the kernel reset the connection, and the client never sees it."""

    LINGER_SECONDS = 2.0

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_refused", False):
            return  # the rest of a refused request: read and dropped until the connection closes
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        self._refused = True
        pending = len(self.conn.trailing_data[0])
        status, detail = (431, f"request header fields too large (more than {MAX_HEADER_BYTES // 1024} KB)") \
            if pending > MAX_HEADER_BYTES else (400, "malformed HTTP request")
        body = json.dumps({"detail": detail}).encode()
        head = (f"HTTP/1.1 {status} {'Request Header Fields Too Large' if status == 431 else 'Bad Request'}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.LINGER_SECONDS, self.transport.close)
