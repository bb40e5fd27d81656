"""Every CSV reader and writer takes `.gz` alike: a stage given gzipped inputs, or asked for a `.csv.gz` output,
writes exactly the rows it writes for the plain files (compared after decompressing); a damaged `.gz` input is
one error line naming it."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import write_csv

ROWS = [  # three images, boxes of Flag, Rose, Infant bed (2018 500-class MIDs), one image without boxes
    ("img_a", "/m/03120 0.9 0.1 0.1 0.5 0.5 /m/06m11 0.8 0.2 0.2 0.6 0.7 /m/03120 0.7 0.12 0.1 0.52 0.5 "),
    ("img_b", "/m/061hd_ 0.55 0.3 0.3 0.9 0.8 "),
    ("img_c", ""),
]


def _text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


@pytest.fixture()
def predictions(tmp_path) -> dict[str, Path]:
    plain = tmp_path / "pred.csv"
    plain.write_text("ImageId,PredictionString\n" + "".join(f"{i},{s}\n" for i, s in ROWS), encoding="utf-8")
    packed = tmp_path / "pred.csv.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {"plain": plain, "gz": packed}


def test_expansion_reads_and_writes_gzip(predictions, tmp_path):
    import create_higher_level_predictions_from_level_1_predictions_csv as stage5

    assert stage5.main([str(predictions["plain"]), str(tmp_path / "out.csv")]) == 0
    assert stage5.main([str(predictions["gz"]), str(tmp_path / "out.csv.gz")]) == 0
    with open(tmp_path / "out.csv.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # compressed
    assert _text(tmp_path / "out.csv.gz") == _text(tmp_path / "out.csv") and "/m/03120" in _text(tmp_path / "out.csv")


def test_ensemble_split_and_concat_take_gzip(predictions, tmp_path):
    import ensemble_predictions_with_weighted_method as stage6
    from retinanet_inference_submission import concat_all_levels_submission as concat
    from retinanet_inference_submission import split_csv

    for kind in ("plain", "gz"):
        out = tmp_path / ("ens.csv" if kind == "plain" else "ens.csv.gz")
        assert stage6.main(["--csvs", str(predictions[kind]), str(predictions[kind]), "--output", str(out)]) == 0
        joined = tmp_path / ("cat.csv" if kind == "plain" else "cat.csv.gz")
        assert concat.main([str(predictions[kind]), str(predictions[kind]), "-o", str(joined)]) == 0
        folder = tmp_path / f"parts_{kind}"
        assert split_csv.main([str(predictions[kind]), "--rows-per-part", "2", "--output-dir", str(folder)]) == 0
    assert _text(tmp_path / "ens.csv.gz") == _text(tmp_path / "ens.csv")
    assert _text(tmp_path / "cat.csv.gz") == _text(tmp_path / "cat.csv")
    plain_parts = sorted((tmp_path / "parts_plain").glob("*.csv"))
    gz_parts = sorted((tmp_path / "parts_gz").glob("*.csv.gz"))  # the parts are compressed as the input was
    assert [p.name + ".gz" for p in plain_parts] == [p.name for p in gz_parts] and len(plain_parts) >= 2
    assert [_text(p) for p in plain_parts] == [_text(p) for p in gz_parts]


def test_evaluation_reads_gzip_predictions(predictions):
    from oid_retinanet.evaluate.oid_map import iter_prediction_chunks

    plain, packed = (list(iter_prediction_chunks(str(predictions[k]))) for k in ("plain", "gz"))
    assert len(plain) == len(packed) == 1
    np.testing.assert_array_equal(plain[0].boxes, packed[0].boxes)
    np.testing.assert_array_equal(plain[0].scores, packed[0].scores)


def test_box_files_and_written_tables_take_gzip(tmp_path):
    from oid_retinanet.oid.annotations import read_boxes

    df = pd.DataFrame({"ImageID": ["a", "b"], "Source": "xclick", "LabelName": "/m/03120", "Confidence": 1,
                       "XMin": [0.1, 0.2], "XMax": [0.5, 0.6], "YMin": [0.1, 0.3], "YMax": [0.4, 0.9],
                       "IsOccluded": 0, "IsTruncated": 0, "IsGroupOf": [0, 1], "IsDepiction": 0, "IsInside": 0})
    write_csv(df, tmp_path / "boxes.csv")
    write_csv(df, tmp_path / "boxes.csv.gz")
    assert _text(tmp_path / "boxes.csv.gz") == _text(tmp_path / "boxes.csv")
    pd.testing.assert_frame_equal(read_boxes(str(tmp_path / "boxes.csv.gz")), read_boxes(str(tmp_path / "boxes.csv")))
    data = (tmp_path / "boxes.csv.gz").read_bytes()
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(OIDInputError, match="damaged or truncated gzip file") as err:
        read_boxes(str(tmp_path / "cut.csv.gz"))
    assert "cut.csv.gz" in str(err.value)


def test_a_truncated_gzip_input_is_one_line(predictions, tmp_path, capsys):
    import create_higher_level_predictions_from_level_1_predictions_csv as stage5

    data = predictions["gz"].read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) - 12])
    assert stage5.main([str(cut), str(tmp_path / "x.csv")]) == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cut.csv.gz" in err[0] and "gzip" in err[0] and "Traceback" not in out, out
    assert not (tmp_path / "x.csv").exists()


def test_class_lists_take_gzip(tmp_path):
    from oid_retinanet.oid.classes import read_class_descriptions

    text = "/m/03120,Flag\n/m/06m11,Rose\n"
    (tmp_path / "c.csv").write_text(text)
    with gzip.open(tmp_path / "c.csv.gz", "wt") as f:
        f.write(text)
    plain, packed = (read_class_descriptions(str(tmp_path / n)) for n in ("c.csv", "c.csv.gz"))
    assert packed.mids == plain.mids == ("/m/03120", "/m/06m11") and packed.names == plain.names
