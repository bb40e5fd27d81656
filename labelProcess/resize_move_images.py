"""Move, copy or shrink every image of one or more folders into another (gujingxiao's resize_move_images.py,
which moved one folder's files with shutil.move).

    python labelProcess/resize_move_images.py train_0/ train_1/ OpenimageV5/train/           # move
    python labelProcess/resize_move_images.py --max-side 1024 train/ train_1024/              # shrink copies

Without --max-side files are moved (--copy copies them). With --max-side images whose longer side is
larger are shrunk to it, never enlarged, and re-encoded (JPEG at --quality, PNG stays PNG); smaller ones are
copied unchanged; the sources stay unless --move. Names already at the destination are skipped, so a rerun
resumes. Files that cannot be read are logged and listed in the failures file; the rest go on, and the run
ends with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os

try:
    from labelProcess import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.cli import positive_int, script_main, setup_logging
from oid_retinanet.data.resize_move import transfer_images, write_failures
from oid_retinanet.errors import OIDInputError

log = logging.getLogger("resize_move_images")


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"quality must be in 1..100, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="+", help="source folder(s); their plain files are taken, sub-folders are not")
    p.add_argument("dst", help="destination folder (created if needed)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copy", action="store_true", help="copy instead of moving (the default with --max-side)")
    mode.add_argument("--move", action="store_true", help="move (the default without --max-side)")
    p.add_argument("--max-side", type=positive_int, metavar="N", help="shrink images so the longer side is at most N")
    p.add_argument("--quality", type=_quality, default=95, help="JPEG quality of shrunk images (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="parallel workers (default: the CPU count, %(default)s)")
    p.add_argument("--failures", help="CSV listing the files that failed (default: DST_failures.csv beside DST)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    move = args.move or (args.max_side is None and not args.copy)
    failures_path = args.failures or os.path.normpath(args.dst) + "_failures.csv"
    setup_logging(args.verbose)
    summary = transfer_images(args.src, args.dst, move=move, max_side=args.max_side, quality=args.quality,
                              workers=args.workers, progress=not args.no_progress)
    log.info("%s -> %s: %s", " ".join(args.src), args.dst, summary.line())
    if summary.failures:
        write_failures(failures_path, summary.failures)
        first, reason = summary.failures[0]
        raise OIDInputError(f"{len(summary.failures)} file(s) failed (first: {first}: {reason}); listed in "
                            f"{failures_path}")
    if os.path.isfile(failures_path):
        os.remove(failures_path)  # a list from an earlier run, all handled now
        log.info("removed %s from an earlier run", failures_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
