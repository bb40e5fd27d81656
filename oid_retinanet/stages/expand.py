"""Stage 5's command line, the parent classes: create_higher_level_predictions_from_level_1_predictions_csv.py
(2018) and retinanet_inference_submission/create_higher_level_predctions.py (2019)."""

from __future__ import annotations

import argparse
import os

from oid_retinanet.cli import fraction, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.predict.expand import DEFAULT_BLOCK_SIZE, DEFAULT_IOU_THR, VARIANTS, expand_csv, load_parent_table


def variant_files(constants) -> dict[str, tuple[str, str, str | None]]:
    """Each variant's metadata: the class list of the predictions, the hierarchy, and the list naming its nodes
    (None: the class list itself)."""
    return {"2018": (constants.CLASS_DESCRIPTIONS_500_CSV, constants.HIERARCHY_JSON, constants.CLASS_DESCRIPTIONS_CSV),
            "2019": (constants.CLASS_DESCRIPTIONS_2019_CSV, constants.HIERARCHY_2019_JSON, None)}


def build_parser(description: str, variant: str, input_csv: str, output_csv: str, constants
                 ) -> argparse.ArgumentParser:
    """The options of the expansion, shared by the 2018 script and the 2019 one (retinanet_inference_submission/);
    `constants` (the script's a00) gives the metadata defaults."""
    files = variant_files(constants)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_csv", nargs="?", default=input_csv, help="predictions CSV (default: %(default)s)")
    p.add_argument("output_csv", nargs="?", default=output_csv, help="output CSV (default: %(default)s)")
    p.add_argument("--only-new", action="store_true", help="write only the added parent boxes")
    p.add_argument("--variant", choices=VARIANTS, default=variant,
                   help="2018: ZFTurbo's script; 2019: gujingxiao's (default: %(default)s)")
    p.add_argument("--iou-thr", type=fraction, metavar="X",
                   help="NMS threshold for the parent boxes (default: the variant's, "
                        + ", ".join(f"{v}: {t}" for v, t in DEFAULT_IOU_THR.items()) + ")")
    p.add_argument("--corrected", action="store_true",
                   help="parents keyed by MID (not by display name) and IoU without the '+1'")
    p.add_argument("--class-descriptions", metavar="CSV",
                   help="class list of the predictions (default: 2018 " + files["2018"][0]
                        + "; 2019 " + files["2019"][0] + ")")
    p.add_argument("--hierarchy", metavar="JSON",
                   help="label hierarchy (default: 2018 " + files["2018"][1] + "; 2019 "
                        + files["2019"][1] + ")")
    p.add_argument("--hierarchy-names", metavar="CSV",
                   help="class list naming the hierarchy's nodes for the by-name lookup (default: 2018 "
                        + files["2018"][2] + "; 2019 the --class-descriptions file)")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE >> 20, choices=range(1, 257), metavar="MB",
                   help="MB of CSV processed at a time, 1-256; memory grows with it (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace, constants) -> int:
    """Expand as the parsed options ask and print a summary line."""
    setup_logging(args.verbose)
    default_labels, default_hierarchy, default_names = variant_files(constants)[args.variant]
    labels = args.class_descriptions or default_labels
    names = args.hierarchy_names or default_names or labels
    for path, option in ((labels, "--class-descriptions"), (args.hierarchy or default_hierarchy, "--hierarchy")):
        if not os.path.exists(path):
            raise OIDInputError(f"not found; the 2019 class list and hierarchy are not shipped: put them in "
                                f"LABEL_PATH ({constants.LABEL_PATH}) or pass {option}" if args.variant == "2019"
                                else f"not found (pass {option})", path)
    table = load_parent_table(labels, args.hierarchy or default_hierarchy, names, corrected=args.corrected)
    iou_thr = DEFAULT_IOU_THR[args.variant] if args.iou_thr is None else args.iou_thr
    summary = expand_csv(args.input_csv, args.output_csv, table, iou_thr=iou_thr, plus_one=not args.corrected,
                         return_only_new=args.only_new, block_size=args.block_size << 20)
    print(f"{args.output_csv}: {summary.line()}")
    return 0
