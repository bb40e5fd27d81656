"""Stage 2 image parameters (oid_retinanet.data.image_params and the two scripts).

Rule: every row equals an independent slow reference (full pixel decode with PIL, md5 of the whole file,
os.path.getsize), with width, height and channel 0 where the full decode fails; channels are also checked
against a hand-worked table. Resumed scans must give the same bytes as a fresh scan. No fixture of the
original exists for this stage (its output depends on the image files), so the reference is the check.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oid_retinanet.data.image_params as ip
from labelProcess import collect_image_parameters as script_2019
from oid_retinanet import files
from retinanet_training_level_1 import find_image_parameters as script_2018

EXTS = ("jpg", "png")
# name -> channels by the module's rule (0: unreadable or truncated)
EXPECTED_CHANNELS = {
    "rgb.jpg": 3, "gray.jpg": 1, "cmyk.jpg": 4, "progressive.jpg": 3, "trailing.jpg": 3, "thumb.jpg": 3,
    "rgba.png": 4, "gray16.png": 1, "rgb16.png": 3, "la.png": 2, "bilevel.png": 1, "palette.png": 3,
    "palette_t.png": 4, "not_image.jpg": 0, "empty.jpg": 0, "truncated.jpg": 0, "cut.png": 0,
    "thumb_cut.jpg": 0, "progressive_cut.jpg": 0, "no_eoi.jpg": 0,
}


def _noise(rng: np.random.Generator, h: int, w: int, c: int | None = 3) -> np.ndarray:
    """Smooth gradient plus noise, so JPEG scan data is long enough to cut in half."""
    grad = np.add.outer(np.linspace(0, 120, h), np.linspace(0, 120, w))
    if c is not None:
        grad = grad[..., None] + np.arange(c) * 30
    return np.clip(grad + rng.normal(0, 40, grad.shape), 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _with_thumbnail_segment(jpeg: bytes, thumb: bytes) -> bytes:
    """Insert an APP1 segment holding a whole JPEG (its own FF D8 ... FF D9) right after SOI."""
    payload = b"Exif\x00\x00" + thumb
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def make_images(seed: int = 0) -> dict[str, bytes]:
    """The test images by file name: every mode the channel rule names, and broken files."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(_noise(rng, 96, 128))
    full = _encode(Image.fromarray(_noise(rng, 256, 256)), "JPEG", quality=95)
    progressive = _encode(Image.fromarray(_noise(rng, 200, 160)), "JPEG", quality=95, progressive=True)
    thumb = _with_thumbnail_segment(full, _encode(Image.fromarray(_noise(rng, 16, 16)), "JPEG"))
    png = _encode(Image.fromarray(_noise(rng, 120, 100)), "PNG")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "rgb.jpg": _encode(rgb, "JPEG", quality=90),
        "gray.jpg": _encode(Image.fromarray(_noise(rng, 50, 70, None)), "JPEG"),
        "cmyk.jpg": _encode(Image.fromarray(_noise(rng, 40, 30, 4), "CMYK"), "JPEG"),
        "progressive.jpg": progressive,
        "trailing.jpg": full + b"\x00" * 5000 + b"appended bytes after the end of the image",
        "thumb.jpg": thumb,
        "rgba.png": _encode(Image.fromarray(_noise(rng, 33, 44, 4), "RGBA"), "PNG"),
        "gray16.png": _encode(Image.fromarray((_noise(rng, 21, 17, None).astype(np.uint16) * 257)), "PNG"),
        "rgb16.png": _rgb16_png(rng),
        "la.png": _encode(Image.fromarray(_noise(rng, 10, 12, 2), "LA"), "PNG"),
        "bilevel.png": _encode(Image.fromarray(_noise(rng, 9, 31, None)).convert("1"), "PNG"),
        "palette.png": _encode(palette, "PNG"),
        "palette_t.png": _encode(palette, "PNG", transparency=0),
        "not_image.jpg": b"id,width,height\nthis is not an image\n",
        "empty.jpg": b"",
        "truncated.jpg": full[:len(full) // 2],
        "cut.png": png[:len(png) // 2],
        "thumb_cut.jpg": thumb[:len(thumb) // 2],
        "progressive_cut.jpg": progressive[:len(progressive) // 2],
        "no_eoi.jpg": full[:-2],
    }


def _rgb16_png(rng: np.random.Generator) -> bytes:
    """A 16-bit-per-channel RGB PNG written by OpenCV (PIL cannot write one)."""
    import cv2

    ok, buf = cv2.imencode(".png", _noise(rng, 14, 19).astype(np.uint16) * 257)
    assert ok
    return buf.tobytes()


def write_images(folder: Path, layout: str, images: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Write the images flat, or spread over two subfolders plus the folder itself; name -> path."""
    images = images or make_images()
    paths = {}
    for k, (name, data) in enumerate(sorted(images.items())):
        sub = "" if layout == "flat" else ["", "0a", "b1"][k % 3]
        path = folder / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


def reference_row(path: Path) -> list[str]:
    """The slow reference: decode every pixel, hash the whole file at once."""
    data = path.read_bytes()
    size, md5 = os.path.getsize(path), hashlib.md5(data).hexdigest()
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            arr = np.array(img)
    except Exception:
        return [path.stem, "0", "0", "0", str(size), md5]
    height, width = arr.shape[:2]
    channel = 1 if arr.ndim == 2 else arr.shape[2]
    return [path.stem, str(width), str(height), str(channel), str(size), md5]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return make_images()


@pytest.fixture(params=[None, 2], ids=["one_run", "runs_of_2"])
def run_rows(request, monkeypatch):
    """The listing (and a resumed run's record) sorted in memory, or through files in runs of 2 rows."""
    if request.param:
        monkeypatch.setattr(files, "SORT_RUN_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("layout,workers", [("flat", 1), ("subfolders", 2)])
def test_rows_match_slow_reference(tmp_path, images, layout, workers, run_rows):
    paths = write_images(tmp_path / "img", layout, images)
    out = tmp_path / "out" / "validation_image_params.csv"
    summary = ip.scan_images(tmp_path / "img", out, workers=workers, extensions=EXTS)
    rows = read_csv(out)
    assert rows[0] == list(ip.HEADER)
    rels = sorted(p.relative_to(tmp_path / "img").as_posix() for p in paths.values())
    assert [r[0] for r in rows[1:]] == [Path(r).stem for r in rels]  # sorted by relative path
    expected = {p.stem: reference_row(p) for p in paths.values()}
    for row in rows[1:]:
        assert row == expected[row[0]], row[0]
    assert {r[0]: int(r[3]) for r in rows[1:]} == {Path(n).stem: c for n, c in EXPECTED_CHANNELS.items()}
    bad = sorted(n for n, c in EXPECTED_CHANNELS.items() if c == 0)
    assert (summary.images, summary.failures, summary.reused) == (len(images), len(bad), 0)
    assert not ip.partial_path(out).exists()


def test_failures_file_lists_bad_files_with_reasons(tmp_path, images):
    paths = write_images(tmp_path / "img", "subfolders", images)
    out = tmp_path / "test_image_params.csv"
    ip.scan_images(tmp_path / "img", out, workers=1, extensions=EXTS)
    lines = ip.failures_path(out).read_text().splitlines()
    assert ip.failures_path(out).name == "test_image_params_failures.txt"
    reasons = dict(line.split("\t") for line in lines)
    assert sorted(reasons) == sorted(str(paths[n]) for n, c in EXPECTED_CHANNELS.items() if c == 0)
    for name in ("truncated.jpg", "thumb_cut.jpg", "progressive_cut.jpg", "no_eoi.jpg"):
        assert reasons[str(paths[name])].startswith("truncated JPEG"), name
    assert reasons[str(paths["cut.png"])].startswith("truncated PNG")
    for name in ("not_image.jpg", "empty.jpg"):
        assert reasons[str(paths[name])].startswith("not a readable image"), name


@pytest.mark.parametrize("chunk_size", [2, 3, 7, 1000, ip.CHUNK_SIZE])
def test_chunk_boundaries_do_not_matter(tmp_path, images, chunk_size):
    """End markers straddling read chunks are found; files over one chunk take the other code path."""
    paths = write_images(tmp_path, "flat", images)
    for name, path in paths.items():
        got = ip.read_image_params(path, chunk_size=chunk_size)
        ref = reference_row(path)
        assert [str(v) for v in got[:5]] == ref[1:], (name, got.problem)
        assert bool(got.problem) == (EXPECTED_CHANNELS[name] == 0), name


def test_unreadable_paths_give_empty_md5(tmp_path):
    folder = ip.read_image_params(tmp_path)  # a folder cannot be read as a file
    assert folder[:3] == (0, 0, 0) and folder.md5 == "" and folder.problem.startswith("cannot read")
    gone = ip.read_image_params(tmp_path / "gone.jpg")
    assert (gone.size, gone.md5) == (0, "") and gone.problem.startswith("cannot read")


def test_jpeg_scan_start_hand_worked():
    app0 = b"\xff\xe0\x00\x04\xff\xd9"          # an APP0 segment whose payload holds FF D9
    sos = b"\xff\xda\x00\x03\x01"
    data = b"\xff\xd8" + app0 + b"\xff\xff" + sos + b"\x12\x34"
    assert ip.jpeg_scan_start(data) == 2 + len(app0) + 2 + len(sos)
    assert ip.jpeg_scan_start(data[:10]) is None          # header cut before the scan
    assert ip.jpeg_scan_start(b"\x89PNG\r\n") is None
    assert ip.jpeg_scan_start(b"\xff\xd8\xff\xd9") is None  # EOI before any scan


def test_image_id_and_listing(tmp_path):
    assert ip.image_id("000a1249af2bc5f0.jpg") == "000a1249af2bc5f0"
    assert ip.image_id("a.b.jpeg", ("jpg", "jpeg")) == "a.b"
    for rel in ("b.jpg", "a/c.jpg", "a/x.png", ".hidden.jpg", "a/.h.jpg", "a/deep/d.jpg", "z.JPG", "a.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert ip.list_images(tmp_path) == ["a.jpg", "a/c.jpg", "b.jpg"]
    assert ip.list_images(tmp_path, (".jpg", "png")) == ["a.jpg", "a/c.jpg", "a/x.png", "b.jpg"]


def test_empty_folder_gives_header_only(tmp_path):
    (tmp_path / "img").mkdir()
    out = tmp_path / "x_image_params.csv"
    assert ip.scan_images(tmp_path / "img", out).images == 0
    assert out.read_text() == "id,width,height,channel,size,md5\n"
    assert ip.failures_path(out).read_text() == ""


def test_resume_reads_only_what_is_left(tmp_path, images, monkeypatch, run_rows):
    paths = write_images(tmp_path / "img", "subfolders", images)
    out = tmp_path / "resumed" / "train_image_params.csv"
    real = ip.read_image_params
    calls: list[str] = []

    def interrupted(path, *a, **kw):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(ip, "read_image_params", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ip.scan_images(tmp_path / "img", out, workers=1, extensions=EXTS)
    partial = ip.partial_path(out)
    assert not out.exists() and partial.exists()
    done = [Path(p) for p in calls]
    assert len(partial.read_text().splitlines()) == 1 + len(done)
    # a run killed while writing a line (cut inside its last field, so it still parses), and a done image
    # changed since
    pending = sorted(p for n, p in paths.items() if EXPECTED_CHANNELS[n] == 0 and p not in done)[0]
    params = real(pending)
    rel = pending.relative_to(tmp_path / "img").as_posix()
    with open(partial, "a") as f:
        f.write(",".join([rel, pending.stem, *map(str, params[:6]), params.problem[:12]]))
    changed = done[1]
    changed.write_bytes(images["rgb.jpg"] if changed.name != "rgb.jpg" else images["gray.jpg"])
    os.utime(changed, ns=(1, 1))

    fresh = tmp_path / "fresh" / "train_image_params.csv"
    monkeypatch.setattr(ip, "read_image_params", real)
    ip.scan_images(tmp_path / "img", fresh, workers=1, extensions=EXTS)

    second: list[str] = []
    monkeypatch.setattr(ip, "read_image_params", lambda path, *a, **kw: second.append(path) or real(path, *a, **kw))
    summary = ip.scan_images(tmp_path / "img", out, workers=1, extensions=EXTS)
    assert sorted(map(Path, second)) == sorted(set(paths.values()) - set(done) | {changed})
    assert summary.reused == len(done) - 1
    assert out.read_bytes() == fresh.read_bytes()
    assert ip.failures_path(out).read_text() == ip.failures_path(fresh).read_text()
    assert not partial.exists()


def test_partial_with_another_header_is_ignored(tmp_path, images):
    write_images(tmp_path / "img", "flat", {"rgb.jpg": images["rgb.jpg"]})
    out = tmp_path / "v_image_params.csv"
    ip.partial_path(out).write_text("id,width\nrgb,1\n")
    ip.scan_images(tmp_path / "img", out, workers=1)
    assert read_csv(out)[1] == reference_row(tmp_path / "img" / "rgb.jpg")


@pytest.mark.parametrize("script", [script_2018, script_2019])
def test_missing_images_folder_is_one_line_and_exit_2(tmp_path, capsys, script):
    missing = tmp_path / "nowhere"
    assert script.main(["--images", str(missing), "--output-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", [script_2018, script_2019])
def test_help(capsys, script):
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0
    assert "_image_params.csv" in capsys.readouterr().out


def test_2018_script_scans_existing_subsets(tmp_path, images):
    dataset, out = tmp_path / "dataset", tmp_path / "out"
    small = {n: images[n] for n in ("rgb.jpg", "gray.jpg", "cmyk.jpg", "truncated.jpg")}
    write_images(dataset / "train", "subfolders", small)
    write_images(dataset / "validation", "flat", small)
    rc = script_2018.main(["--dataset-path", str(dataset), "--input-path", str(tmp_path / "input"),
                           "--output-path", str(out), "--workers", "1"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "train_image_params.csv", "train_image_params_failures.txt",
        "validation_image_params.csv", "validation_image_params_failures.txt"]
    for subset in ("train", "validation"):
        rows = read_csv(out / f"{subset}_image_params.csv")
        refs = sorted(reference_row(p) for p in (dataset / subset).rglob("*.jpg"))
        assert sorted(rows[1:]) == refs


def test_2019_script_images_flag_names_output_after_folder(tmp_path, images):
    write_images(tmp_path / "test", "flat", {"rgb.jpg": images["rgb.jpg"], "rgba.png": images["rgba.png"]})
    rc = script_2019.main(["--images", str(tmp_path / "test"), "--output-path", str(tmp_path / "out"),
                           "--extensions", "jpg", "png"])
    assert rc == 0
    rows = read_csv(tmp_path / "out" / "test_image_params.csv")
    assert rows[1:] == [reference_row(tmp_path / "test" / n) for n in ("rgb.jpg", "rgba.png")]


def test_script_without_any_folder_is_exit_2(tmp_path, capsys):
    assert script_2019.main(["--dataset-path", str(tmp_path), "--output-path", str(tmp_path / "out")]) == 2
    assert "no image folder found" in capsys.readouterr().err


@pytest.mark.parametrize("script", [script_2018, script_2019])
@pytest.mark.parametrize("names", [("a.jpg", "a.png"), ("0/a.jpg", "1/a.jpg")])
def test_two_files_with_one_image_id_are_refused(tmp_path, images, capsys, script, names, run_rows):
    """a.jpg and a.png (several --extensions), or one name in two subfolders: one line naming both, exit 2,
    no CSV (it would give ImageID a two rows)."""
    folder = tmp_path / "img"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(images["rgb.jpg"])
    (folder / "b.jpg").write_bytes(images["gray.jpg"])
    rc = script.main(["--images", str(folder), "--output-path", str(tmp_path / "out"), "--extensions", "jpg", "png"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "image id a names 2 files" in err and all(name in err for name in names), err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_must_be_a_positive_count(tmp_path, capsys, workers):
    with pytest.raises(SystemExit) as exc:
        script_2018.main(["--images", str(tmp_path), "--workers", workers])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --workers:" in err and workers in err.splitlines()[-1], err


def test_shared_ids_are_counted(run_rows):
    rels = ["c.jpg", "1/b.jpg", "a.png", "0/b.jpg", "0/a.jpg", "d.jpg", "2/b.jpg", "1/e.jpg"]
    with pytest.raises(ip.OIDInputError) as exc:
        ip._check_unique_ids("img", rels, EXTS)
    assert str(exc.value).startswith("img: image id a names 2 files: 0/a.jpg, a.png (1 more ids are shared); "), exc
    ip._check_unique_ids("img", rels[:3] + rels[5:6], EXTS)  # all ids differ: no error
