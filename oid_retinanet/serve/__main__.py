"""`make serve`: the web demo on http://127.0.0.1:8000 (port from PORT, or --port).

The model is --weights (a keras-retinanet .h5, training or converted, or one of ours, .keras), else the
environment variable OID_SERVE_WEIGHTS, else the model `make demo` trained (`serve_weights` in
demo_output/summary.json). Its classes, image sides and anchors are those of its card, as stage 4 resolves them
(predict/resolve.py): --labels / OID_SERVE_LABELS (MID,DisplayName per line in output order), --min-side /
--max-side and --config override it; a model without a card gets the released models' list for 443 or 500
classes and its backbone's sides. The parent classes come from stage 5's expansion (the 2018 rule,
or --corrected-parents). The model is loaded once; requests queue for it, and those of the same input shape
share a model call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path

from oid_retinanet import resources
from oid_retinanet.cli import fraction, positive_int, script_main, setup_logging
from oid_retinanet.errors import OIDInputError

log = logging.getLogger("oid_retinanet.serve")

DEMO_SUMMARY = Path("demo_output") / "summary.json"  # `make demo`'s, from the folder the server starts in
DEFAULT_PORT = 8000


def _default_port() -> int:
    text = os.environ.get("PORT", "")
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise OIDInputError(f"PORT={text!r} is not a port number")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from oid_retinanet.predict.ensemble import MIRROR_DEFAULTS
    from oid_retinanet.serve.app import (
        DEFAULT_DECODE_MEMORY_MB,
        DEFAULT_DECODE_WORKERS,
        DEFAULT_MAX_PENDING,
        DEFAULT_MAX_UPLOAD_BYTES,
    )
    from oid_retinanet.serve.service import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS

    p = argparse.ArgumentParser(prog="python -m oid_retinanet.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="model file (default: OID_SERVE_WEIGHTS, else the demo's model)")
    p.add_argument("--labels", metavar="FILE", help="the model's classes, MID,DisplayName per line in output order "
                                                    "(default: OID_SERVE_LABELS, the demo's, or the released list)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, help=f"port (default: PORT, else {DEFAULT_PORT})")
    p.add_argument("--min-side", type=positive_int,
                   help="resize: short side (default: the model card's, else the backbone's: 768 for resnet50/101, "
                        "600 for 152)")
    p.add_argument("--max-side", type=positive_int,
                   help="resize: long side at most (default: the model card's, else the backbone's: 1024 for "
                        "resnet50/101, 800 for 152)")
    p.add_argument("--config", metavar="FILE",
                   help="keras-retinanet's config.ini with the model's anchors (only for a model without a card)")
    p.add_argument("--corrected-parents", action="store_true",
                   help="parent classes keyed by MID, IoU without the '+1' (stage 5's --corrected)")
    p.add_argument("--skip-box-thr", type=fraction, default=MIRROR_DEFAULTS["skip_box_thr"],
                   help="drop boxes scoring below this before the mirror merge (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                   help="largest upload in MB (default: %(default)g)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help="largest image in megapixels, checked before decoding (default: %(default)g)")
    p.add_argument("--max-pending", type=positive_int, default=DEFAULT_MAX_PENDING,
                   help="requests in progress at once; more are answered 503 (default: %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                   help="images of one shape sharing a model call (default: %(default)s)")
    p.add_argument("--decode-workers", type=positive_int, default=DEFAULT_DECODE_WORKERS,
                   help="uploads decoded at once (default: %(default)s)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name the server answers to besides its address and the loopback names (repeat for "
                        "more); others get 400, against DNS rebinding. Bound to all interfaces with none given: any")
    p.add_argument("--decode-memory-mb", type=float, default=DEFAULT_DECODE_MEMORY_MB,
                   help="memory the uploads being decoded may take together, estimated from their sizes; more wait "
                        "(default: %(default)g)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="do not run the model before serving")
    p.add_argument("--demo-summary", default=str(DEMO_SUMMARY), help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.port is None:
        args.port = _default_port()
    if not 0 <= args.port < 65536:
        p.error(f"--port {args.port} is not a port number")
    if min(args.max_upload_mb, args.max_megapixels, args.decode_memory_mb) <= 0:
        p.error("--max-upload-mb, --max-megapixels and --decode-memory-mb must be positive")
    return args


def resolve_model_files(weights: str | None, labels: str | None, summary_path: str | os.PathLike
                        ) -> tuple[str, str | None, str]:
    """(weights, labels or None, where they came from): the flags, else OID_SERVE_WEIGHTS / OID_SERVE_LABELS,
    else `serve_weights` of the demo's summary.json (whose card names its classes). OIDInputError when there is none.

    Relative paths in the summary are taken from the current folder, else from the summary's folder.
    """
    labels = labels or os.environ.get("OID_SERVE_LABELS") or None
    if weights:
        return weights, labels, "--weights"
    if os.environ.get("OID_SERVE_WEIGHTS"):
        return os.environ["OID_SERVE_WEIGHTS"], labels, "OID_SERVE_WEIGHTS"
    summary_path = Path(summary_path)
    advice = "run `make demo` (it trains a small model) or pass --weights FILE (or set OID_SERVE_WEIGHTS)"
    if not summary_path.is_file():
        raise OIDInputError(f"no model to serve: {advice}")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OIDInputError(f"cannot read the demo summary ({exc}); {advice}", str(summary_path)) from None
    if not isinstance(summary, dict) or not summary.get("serve_weights"):
        raise OIDInputError(f"no serve_weights (the demo has not trained a model yet): {advice}", str(summary_path))

    def located(path: str) -> str:
        if Path(path).is_absolute() or Path(path).exists():
            return path
        return str(summary_path.parent / path)

    return located(summary["serve_weights"]), labels, str(summary_path)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, so a busy port is one line before the model is loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OIDInputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port or PORT") \
            from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    weights, labels_csv, source = resolve_model_files(args.weights, args.labels, args.demo_summary)
    if not os.path.exists(weights):
        raise FileNotFoundError(2, "No such file or directory", weights)
    if labels_csv and not os.path.exists(labels_csv):
        raise FileNotFoundError(2, "No such file or directory", labels_csv)
    sock = listen(args.host, args.port)

    import uvicorn

    from oid_retinanet.model.anchors import read_anchor_config
    from oid_retinanet.predict.resolve import resolve_model
    from oid_retinanet.serve.app import JSONRefusalsH11Protocol, Limits, allowed_hosts, create_app
    from oid_retinanet.serve.service import (
        DetectionService,
        MergeSettings,
        ModelInfo,
        load_parent_expansion,
    )

    log.info("loading %s (from %s)", weights, source)
    resolved = resolve_model(weights, labels=labels_csv, min_side=args.min_side, max_side=args.max_side,
                             anchors=read_anchor_config(args.config) if args.config else None, config=args.config)
    model, labels = resolved.load(), resolved.labels
    backbone, (min_side, max_side) = resolved.card.backbone, resolved.sides
    parents = load_parent_expansion(labels, resources.CLASS_DESCRIPTIONS_500_CSV, resources.HIERARCHY_JSON,
                                    resources.CLASS_DESCRIPTIONS_CSV,
                                    corrected=args.corrected_parents)
    info = ModelInfo(Path(weights).name, backbone, min_side, max_side, labels.source)
    service = DetectionService(model, labels, info, parents, MergeSettings(skip_box_thr=args.skip_box_thr),
                               max_batch=args.max_batch)
    service.start(warmup=args.warmup)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
                    max_pending=args.max_pending, decode_workers=args.decode_workers,
                    decode_memory_mb=args.decode_memory_mb)
    host, port = sock.getsockname()[:2]
    app = create_app(service, limits, allowed_hosts(host, args.allowed_host))
    shown = f"[{host}]" if ":" in host else host
    print(f"serving the web demo on http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, http=JSONRefusalsH11Protocol, log_level="debug" if args.verbose else "warning",
                            server_header=False,
                            timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: the normal way to stop
        pass
    finally:
        service.stop()
        sock.close()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
