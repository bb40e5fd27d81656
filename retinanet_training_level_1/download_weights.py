"""Download the original's released RetinaNet models (and the ImageNet ResNet files) into MODELS_PATH.

Name files as `--list` shows them (e.g. resnet101_2018_inference, resnet152_2019_training,
resnet50_imagenet_fizyr; the release file name works too), or select them with --backbone / --year / --kind
(--all: every released RetinaNet model, 2018 and 2019, training and inference: about 5.9 GB).

A download goes to NAME.part and is renamed when complete and checked; an interrupted one resumes where it
stopped when run again (and up to --retries times by itself). Files already present are skipped. Sizes are
checked against what the server announces (exact sizes could not be obtained; see oid_retinanet/model/download.py),
md5 sums where known (the ImageNet files).
"""

from __future__ import annotations

import argparse

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.model import download as dl


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="files to download, by name (see --list)")
    p.add_argument("--list", action="store_true", help="show the files (the selected ones, if any filter is "
                   "given) and which are already downloaded, then stop")
    p.add_argument("--backbone", nargs="+", choices=["resnet50", "resnet101", "resnet152"],
                   help="select the files of these backbones")
    p.add_argument("--year", nargs="+", type=int, choices=[2018, 2019], help="select the releases of these years")
    p.add_argument("--kind", nargs="+", choices=list(dl.KINDS),
                   help="select training snapshots, inference (converted) models or ImageNet backbone files "
                   "(default with the other filters: training and inference)")
    p.add_argument("--all", action="store_true", help="every released RetinaNet model (not the ImageNet files "
                   "unless --kind imagenet)")
    p.add_argument("--models-path", default=C.MODELS_PATH, help="where the files go (default: %(default)s)")
    p.add_argument("--mirror", metavar="URL", help="fetch each file from URL/FILENAME instead of its release URL")
    p.add_argument("--retries", type=int, default=dl.RETRIES,
                   help="resume this many times after a dropped connection (default: %(default)s)")
    p.add_argument("--verify", action="store_true",
                   help="also check the md5/sha256 of files already present (where a checksum is known)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def selected(args: argparse.Namespace) -> list[dl.WeightFile]:
    """The table entries the command line names or selects, in table order, without repeats."""
    filtered = bool(args.backbone or args.year or args.kind or args.all)
    chosen = [dl.weight_file(n) for n in args.names]
    if filtered:
        kinds = args.kind or [dl.KIND_TRAINING, dl.KIND_INFERENCE]
        chosen += dl.select_weight_files(args.backbone, args.year, kinds)
    if not chosen and filtered:
        raise OIDInputError("no file matches the selection (see --list)")
    return [e for e in dl.WEIGHT_FILES if e in chosen]


def print_listing(entries: list[dl.WeightFile], models_path: str) -> None:
    """One line per file: name, classes, size, local state, file name."""
    print(f"{'name':<28} {'classes':>7} {'size':>9}  {'here':<24} file (in {models_path})")
    for e in entries:
        state, size = dl.local_status(e, models_path)
        if state == "partial":
            approx = f" of ~{e.approx_mb} MB" if e.approx_mb else ""
            state = f"partial {dl.format_size(size)}{approx}"
        elif state in ("present", "wrong size"):
            state = f"{state} {dl.format_size(size)}"
        shown = dl.format_size(e.size) if e.size is not None else (f"~{e.approx_mb} MB" if e.approx_mb else "?")
        classes = "-" if e.kind == dl.KIND_IMAGENET else str(e.classes)
        print(f"{e.name:<28} {classes:>7} {shown:>9}  {state:<24} {e.filename}")


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    entries = selected(args)
    if args.list:
        print_listing(entries or list(dl.WEIGHT_FILES), args.models_path)
        return 0
    if not entries:
        raise OIDInputError("name the files to download or select them with --backbone/--year/--kind/--all "
                            "(--list shows them)")
    for entry in entries:
        if args.mirror:
            entry = dl.with_mirror(entry, args.mirror)
        state, _ = dl.local_status(entry, args.models_path)
        path = dl.download(entry, args.models_path, progress=args.progress, retries=args.retries)
        if state == "present" and args.verify:
            dl.verify_checksum(path, entry.checksum)
        verb = "present" if state == "present" else "downloaded"
        print(f"{entry.name}: {verb} {path} ({dl.format_size(path.stat().st_size)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
