"""Shared plumbing of the scripts: logging set-up and turning user errors into one line and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator

from oid_retinanet.errors import OIDInputError

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


def script_main(func: Callable[..., int]) -> Callable[..., int]:
    """Wrap a script's main(argv) so bad input ends with one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        prog = getattr(func, "__module__", "script")
        try:
            return func(argv)
        except (OIDInputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            print(f"error: {_describe(exc)}", file=sys.stderr)
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
