"""Shared plumbing of the scripts: process set-up (the C allocator), logging, and turning user errors into one line
and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.abc
import importlib.util
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterator

from oid_retinanet.errors import OIDInputError, is_disk_full

EXIT_USER_ERROR = 2


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with verbose."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # TensorFlow gives its logger a handler of its own when it is imported before this: its messages would
    # print twice (once in its format, once in ours).
    tf_logger = logging.getLogger("tensorflow")
    for handler in list(tf_logger.handlers):
        tf_logger.removeHandler(handler)


# glibc's malloc hands freed memory back to the kernel as soon as the top of a heap is free and serves blocks over its
# (adaptive) mmap threshold with fresh mappings; a training or inference step frees and re-allocates its tensors
# (gradients, optimizer temporaries, activations: ~0.65 GB a ResNet50 training step), so every step re-faults and
# zeroes the same memory in the kernel: ~30% of the demo's training CPU time went there. Keeping freed memory in
# the process (trim threshold 1 GB, fixed mmap threshold 32 MB, the largest glibc allows, few arenas) cuts the page
# faults ~5-10x (BENCHMARKS.md: kernel share). Set before any thread starts; OID_MALLOC=system keeps glibc's defaults.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
MALLOC_SETTINGS = {_M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20, _M_MMAP_THRESHOLD: 32 << 20}


def tune_allocator() -> bool:
    """Keep freed memory in the process (see above) when the C library is glibc; True when the settings took."""
    if os.environ.get("OID_MALLOC", "").lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    settings = {**MALLOC_SETTINGS, _M_ARENA_MAX: max(2, os.cpu_count() or 1)}
    return all(mallopt(param, value) == 1 for param, value in settings.items())


def script_main(func: Callable[..., int]) -> Callable[..., int]:
    """Wrap a script's main(argv) so bad input ends with one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        prog = getattr(func, "__module__", "script")
        tune_allocator()
        quiet_backend_start(any(a in ("-v", "--verbose") for a in (sys.argv[1:] if argv is None else argv)))
        try:
            return func(argv)
        except (OIDInputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            print(f"error: {_describe(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except OSError as exc:
            if not is_disk_full(exc):  # a write outside an atomic output (a resumable stage's .partial file)
                raise
            print(f"error: no space left on the device{': ' + str(exc.filename) if exc.filename else ''}",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; finished outputs are kept, unfinished ones were not written",
                  file=sys.stderr)
            return 130
        except ModuleNotFoundError as exc:
            backend = os.environ.get("KERAS_BACKEND", "")
            if not backend or (exc.name or "").split(".")[0] != backend:
                raise
            print(f"error: KERAS_BACKEND={backend}, but {backend} is not installed (README: choosing the backend; "
                  "tested: jax==0.10.2 jaxlib==0.10.2, torch==2.13.0)", file=sys.stderr)
            return EXIT_USER_ERROR

    return wrapper


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (thresholds, ratios, shares)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hide what native code writes straight to file descriptor 2 (TensorFlow's start-up lines) meanwhile."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports TensorFlow, wherever the first `import tensorflow` happens (Keras, a script's defaults), with what
    it prints at start hidden: its oneDNN and CPU-feature notices and, on a machine without a GPU, its CUDA
    probe (`Could not find cuda drivers`, `failed call to cuInit: ... UNKNOWN ERROR (303)`), which read like
    failures. The probe runs here (listing the physical devices), not at the first operation; the runtime is
    not created, so --multi-gpu can still split the CPU into devices."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with quiet_native_stderr():
            self.loader.exec_module(module)
            module.config.list_physical_devices()


def quiet_backend_start(verbose: bool) -> None:
    """Unless verbose: TensorFlow's start-up lines hidden (see _QuietTensorFlowImport) and its later log at
    warnings and errors (TF_CPP_MIN_LOG_LEVEL 2 unless set). With -v everything shows."""
    if verbose or "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.meta_path.insert(0, _QuietTensorFlowImport())


PARALLEL_ITERATIONS_HELP = ("keras-retinanet's images filtered in parallel (tf.map_fn); accepted, with no effect: "
                            "here a batch's detections are filtered in one vectorised step")
