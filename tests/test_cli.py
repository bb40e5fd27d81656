"""oid_retinanet.cli: the allocator settings every script gets at start, and the backend's start-up lines.

Rule: a step-like pattern (a dozen arrays of 1-30 MB allocated, touched and freed, 20 times) measured in a fresh
process by its minor page faults, with the settings and with glibc's defaults (OID_MALLOC=system). glibc's
defaults return the freed memory to the kernel and fault it in again each time (~85,000 faults on the machine
this was written on); kept in the process, only the first round faults (~6,000). The test asks for 4x fewer.

TensorFlow prints notices and, on a machine without a GPU, a failed CUDA probe when it starts; a script shows
them only with -v. Rule: a script that loads the backend and then stops on bad input prints exactly its one
error line; with -v the same run also shows the backend's lines.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO

STEPS = """
import resource, sys
from oid_retinanet.cli import tune_allocator
tuned = tune_allocator()
import numpy as np
sizes = [(1 + (7 * i) % 30) << 18 for i in range(12)]  # float32 arrays of 1-30 MB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    arrays = [np.ones(n, np.float32) for n in sizes]
    del arrays
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(malloc: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "OID_MALLOC"}
    if malloc:
        env["OID_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", STEPS], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_memory_is_kept_in_the_process():
    tuned, faults_tuned = _faults(None)
    untuned, faults_default = _faults("system")
    assert tuned and not untuned
    assert faults_tuned * 4 < faults_default, (faults_tuned, faults_default)


TF_START_LINES = ("cuInit", "cudart_stub", "cpu_feature_guard", "oneDNN custom operations", "absl::InitializeLog")


def test_backend_start_up_lines_only_with_verbose(tmp_path):
    """convert_retinanet_model.py loads the backend, then refuses an output that is not .keras."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    command = [sys.executable, "retinanet_training_level_1/convert_retinanet_model.py", str(tmp_path / "in.h5"),
               str(tmp_path / "out.h5")]
    quiet = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.splitlines() == [
        f"error: {tmp_path / 'out.h5'}: the output must be a Keras 3 model file ending in .keras"], quiet.stderr
    verbose = subprocess.run(command + ["-v"], cwd=REPO, env=env, capture_output=True, text=True)
    assert verbose.returncode == 2 and "ending in .keras" in verbose.stderr.splitlines()[-1]
    assert any(line in verbose.stderr for line in TF_START_LINES), verbose.stderr


# ---- any file given to any script: not UTF-8 text -----------------------------------------------------------

PRED_HEADER = "ImageId,PredictionString\n"
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,"
              "IsInside\n")
LABEL_HEADER = "ImageID,Source,LabelName,Confidence\n"


def _not_utf8(kind: str, text: str) -> bytes:
    """`text` as a gzip file, as UTF-16, or with a stray Latin-1 byte in its last row (after a bad one)."""
    import gzip

    if kind == "gzip":
        return gzip.compress(text.encode())
    if kind == "utf16":
        return text.encode("utf-16")
    return text.encode() + "img\xe9,x\n".encode("latin-1")


def _scripts(tmp_path, good: dict):
    import create_files_for_training_by_levels as levels_2018
    import create_higher_level_predictions_from_level_1_predictions_csv as stage5
    import ensemble_predictions_with_weighted_method as stage6
    import evaluate_oid_map as evaluate
    from labelProcess import create_files_for_training_by_levels as levels_2019
    from retinanet_inference_submission import concat_all_levels_submission, delete_higher_level_predictions, split_csv

    out = str(tmp_path / "out")
    return {  # name -> (main, argv with BAD where the bad file goes, the good text of that file)
        "levels 2018": (levels_2018.main, ["--train-csv", "BAD", "--validation-csv", good["boxes"], "--levels", "1",
                                           "--output-path", out], "boxes"),
        "levels 2019": (levels_2019.main, ["--train-csv", "BAD", "--output-path", out], "boxes"),
        "stage 5": (stage5.main, ["BAD", out + ".csv"], "predictions"),
        "stage 6": (stage6.main, ["--csvs", "BAD", good["predictions"], "--output", out + ".csv"], "predictions"),
        "evaluation, predictions": (evaluate.main, ["--predictions", "BAD", "--gt-boxes", good["gt_boxes"],
                                                    "--gt-labels", good["labels"], "--output-dir", out],
                                    "predictions"),
        "evaluation, boxes": (evaluate.main, ["--predictions", good["predictions"], "--gt-boxes", "BAD",
                                              "--gt-labels", good["labels"], "--output-dir", out], "gt_boxes"),
        "evaluation, labels": (evaluate.main, ["--predictions", good["predictions"], "--gt-boxes", good["gt_boxes"],
                                               "--gt-labels", "BAD", "--output-dir", out], "labels"),
        "split": (split_csv.main, ["BAD", "--output-dir", out], "predictions"),
        "2019 concat": (concat_all_levels_submission.main, ["BAD", good["predictions"], "-o", out + ".csv"],
                        "predictions"),
        "2019 delete higher levels": (delete_higher_level_predictions.main, ["BAD", out + ".csv"], "predictions"),
    }


GOOD_TEXT = {
    "boxes": BOX_HEADER + "0a,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0\n",
    "gt_boxes": BOX_HEADER + "0a,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0\n",
    "labels": LABEL_HEADER + "0a,verification,/m/01g317,1\n",
    "predictions": PRED_HEADER + "0a,/m/01g317 0.5 0.1 0.2 0.5 0.6\n0b,/m/01g317 high 0.1 0.2 0.5 0.6\n",
}
CASES = ["levels 2018", "levels 2019", "stage 5", "stage 6", "evaluation, predictions", "evaluation, boxes",
         "evaluation, labels", "split", "2019 concat", "2019 delete higher levels"]


@pytest.mark.parametrize("kind", ["gzip", "utf16", "stray byte"])
@pytest.mark.parametrize("case", CASES)
def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys, case, kind):
    good = {}
    for name, text in GOOD_TEXT.items():
        good[name] = str(tmp_path / f"{name}.csv")
        (tmp_path / f"{name}.csv").write_text(text.replace(" high ", " 0.4 "))
    main, argv, which = _scripts(tmp_path, good)[case]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(_not_utf8(kind, GOOD_TEXT[which]))
    capsys.readouterr()
    rc = main([str(bad) if a == "BAD" else a for a in argv])
    err = capsys.readouterr().err
    # log lines start with the time; progress bars have "%|"
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and not line[:2].isdigit() and "%|" not in line]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    # gzip and UTF-16 are not UTF-8 from their first byte; the stray byte may be met after a bad row
    assert lines[0].startswith(f"error: {bad}") and ("UTF-8" in lines[0] or kind == "stray byte"), lines[0]


def test_keras_retinanet_parallel_iterations_is_accepted_and_checked(capsys):
    """keras-retinanet's convert_model.py / evaluate.py flag: accepted (no effect here), a positive count."""
    import retinanet_inference_example as stage4
    from retinanet_training_level_1 import convert_retinanet_model as convert

    assert convert.parse_args(["in.h5", "out.keras", "--parallel-iterations", "8"]).parallel_iterations == 8
    args = stage4.parse_args(["--weights", "w.h5", "--images", "d", "--parallel-iterations", "4"])
    assert args.parallel_iterations == 4
    for parse, argv in ((convert.parse_args, ["in.h5", "out.keras"]),
                        (stage4.parse_args, ["--from-cache", "--cache-dir", "c"])):
        with pytest.raises(SystemExit):
            parse([*argv, "--parallel-iterations", "0"])
        assert "--parallel-iterations" in capsys.readouterr().err
