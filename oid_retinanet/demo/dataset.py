"""A small, deterministic Open Images-format dataset for the demo and the tests.

Five real OID classes, drawn as distinct shapes, colours and textures on varied backgrounds: Apple, Orange
and Lemon (level-1 leaves under the level-2 class Fruit), Stop sign (under Traffic sign) and Flag (no
parent). Colour alone does not separate them (the apple and the stop sign are both red, the lemon and some
flags yellow). Files follow the official layouts:

    annotations/{train,validation}-annotations-bbox.csv      13-column box CSVs (v4 layout)
    challenge-2019-{train,validation}-detection-bbox.csv      the same boxes under the names level 1 reads
    annotations/{train,validation}-annotations-human-imagelabels-boxable.csv   image-level labels
    train/<first hex digit>/<ImageID>.jpg, validation/<ImageID>.jpg, test/<ImageID>.jpg

Image IDs are 16 hex digits. About one image in eight holds a group-of box around a cluster of small objects
of one class (IsGroupOf=1); each image has verified negative labels for some classes it does not show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from oid_retinanet.files import atomic_path, write_csv
from oid_retinanet.oid.annotations import BOX_COLUMNS, IMAGE_LABEL_COLUMNS

CLASSES = {  # MID -> display name, as in class-descriptions-boxable.csv
    "/m/014j1m": "Apple",
    "/m/0cyhj_": "Orange",
    "/m/09k_b": "Lemon",
    "/m/02pv19": "Stop sign",
    "/m/03120": "Flag",
}


@dataclass(frozen=True)
class DatasetSpec:
    """How many images of which size; the seed fixes every pixel and row."""

    n_train: int = 120
    n_validation: int = 40
    n_test: int = 20
    width: int = 320
    height: int = 240
    seed: int = 2018


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.integers(40, 220, size=(2, 3))
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    grad = (c0[None, :] * (1 - t[:, None]) + c1[None, :] * t[:, None]).astype(np.float32)
    img = np.broadcast_to(grad[None, :, :], (h, w, 3)) if len(t) == w else np.broadcast_to(grad[:, None, :],
                                                                                            (h, w, 3))
    img = img + rng.normal(0, 12, size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 6)):  # clutter: lines and blobs that belong to no class
        p1, p2 = rng.integers(0, (w, h), size=(2, 2))
        cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), tuple(int(v) for v in
                 rng.integers(0, 255, 3)), int(rng.integers(1, 4)))
    return img


def _draw(img: np.ndarray, name: str, x1: int, y1: int, x2: int, y2: int, rng: np.random.Generator) -> None:
    """Draw one object filling the box (x1, y1, x2, y2) in pixels (BGR image)."""
    cx, cy, rx, ry = (x1 + x2) // 2, (y1 + y2) // 2, max(2, (x2 - x1) // 2), max(2, (y2 - y1) // 2)
    if name == "Apple":
        color = (30, 30, 200) if rng.random() < 0.7 else (40, 180, 60)
        cv2.ellipse(img, (cx, cy + ry // 8), (rx, ry - ry // 8), 0, 0, 360, color, -1)
        cv2.line(img, (cx, y1 + ry // 4), (cx + rx // 6, y1), (20, 50, 90), max(1, rx // 8))
        cv2.ellipse(img, (cx + rx // 3, y1 + ry // 6), (max(1, rx // 4), max(1, ry // 8)), -30, 0, 360,
                    (40, 160, 40), -1)
        cv2.circle(img, (cx - rx // 3, cy - ry // 4), max(1, rx // 6), (200, 200, 255), -1)  # highlight
    elif name == "Orange":
        cv2.circle(img, (cx, cy), min(rx, ry), (20, 140, 250), -1)
        for _ in range(12):  # dimpled peel
            a, r = rng.random() * 2 * np.pi, rng.random() * min(rx, ry) * 0.8
            cv2.circle(img, (int(cx + r * np.cos(a)), int(cy + r * np.sin(a))), 1, (10, 100, 200), -1)
    elif name == "Lemon":
        cv2.ellipse(img, (cx, cy), (rx, int(ry * 0.7)), 0, 0, 360, (40, 230, 240), -1)
        cv2.circle(img, (x1 + 2, cy), max(1, ry // 6), (40, 200, 220), -1)
        cv2.circle(img, (x2 - 2, cy), max(1, ry // 6), (40, 200, 220), -1)
    elif name == "Stop sign":
        r = min(rx, ry)
        pts = np.array([(cx + r * np.cos(np.pi / 8 + k * np.pi / 4), cy + r * np.sin(np.pi / 8 + k * np.pi / 4))
                        for k in range(8)], dtype=np.int32)
        cv2.fillPoly(img, [pts], (255, 255, 255))
        cv2.fillPoly(img, [((pts - (cx, cy)) * 0.85 + (cx, cy)).astype(np.int32)], (30, 30, 210))
        cv2.rectangle(img, (cx - r // 2, cy - max(1, r // 8)), (cx + r // 2, cy + max(1, r // 8)),
                      (255, 255, 255), -1)
    elif name == "Flag":
        pole = max(1, (x2 - x1) // 12)
        cv2.rectangle(img, (x1, y1), (x1 + pole, y2), (60, 60, 60), -1)
        colors = [tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in range(3)]
        fy2 = y1 + (y2 - y1) * 2 // 3
        for k, c in enumerate(colors):
            cv2.rectangle(img, (x1 + pole, y1 + (fy2 - y1) * k // 3), (x2, y1 + (fy2 - y1) * (k + 1) // 3), c, -1)
    else:
        raise ValueError(f"no drawing for {name}")


def _image(rng: np.random.Generator, spec: DatasetSpec, image_id: str) -> tuple[np.ndarray, list[dict], set[str]]:
    h, w = spec.height, spec.width
    img = _background(rng, h, w)
    rows, present = [], set()
    mids = list(CLASSES)
    if rng.random() < 0.125:  # a group-of cluster
        mid = mids[rng.integers(len(mids))]
        s = int(rng.integers(14, 22))
        gx, gy = int(rng.integers(0, w - 4 * s)), int(rng.integers(0, h - 2 * s))
        for i in range(4):
            ox, oy = gx + i * s, gy + (i % 2) * s // 2
            _draw(img, CLASSES[mid], ox, oy, ox + s - 2, oy + s - 2, rng)
        rows.append(_row(image_id, mid, gx, gx + 4 * s - 2, gy, gy + s + s // 2 - 2, w, h, group_of=1))
        present.add(mid)
    for _ in range(int(rng.integers(1, 4))):
        mid = mids[rng.integers(len(mids))]
        size = int(rng.integers(min(h, w) // 5, min(h, w) // 2))
        bw = size if CLASSES[mid] != "Lemon" else int(size * 1.3)
        bw = min(bw, w - 1)
        x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - size))
        _draw(img, CLASSES[mid], x1, y1, x1 + bw, y1 + size, rng)
        rows.append(_row(image_id, mid, x1, x1 + bw, y1, y1 + size, w, h))
        present.add(mid)
    return img, rows, present


def _row(image_id: str, mid: str, x1: int, x2: int, y1: int, y2: int, w: int, h: int, group_of: int = 0) -> dict:
    return {"ImageID": image_id, "Source": "xclick", "LabelName": mid, "Confidence": 1,
            "XMin": round(x1 / w, 6), "XMax": round(x2 / w, 6), "YMin": round(y1 / h, 6), "YMax": round(y2 / h, 6),
            "IsOccluded": 0, "IsTruncated": int(x1 == 0 or y1 == 0), "IsGroupOf": group_of, "IsDepiction": 0,
            "IsInside": 0}


def make_dataset(root: str, spec: DatasetSpec = DatasetSpec()) -> dict[str, int]:
    """Write the dataset under `root` (see the module docstring); returns the number of images per subset."""
    rng = np.random.default_rng(spec.seed)
    counts = {"train": spec.n_train, "validation": spec.n_validation, "test": spec.n_test}
    for subset, n in counts.items():
        boxes, labels = [], []
        for _ in range(n):
            image_id = f"{int(rng.integers(0, 2**64, dtype=np.uint64)):016x}"
            img, rows, present = _image(rng, spec, image_id)
            folder = os.path.join(root, subset, image_id[0]) if subset == "train" else os.path.join(root, subset)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, image_id + ".jpg")
            with atomic_path(path) as tmp:
                ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
                tmp.write_bytes(data.tobytes())
            boxes.extend(rows)
            absent = [m for m in CLASSES if m not in present]
            negatives = [absent[i] for i in rng.permutation(len(absent))[: int(rng.integers(1, 3))]] if absent else []
            labels.extend({"ImageID": image_id, "Source": "verification", "LabelName": m, "Confidence": 1}
                          for m in sorted(present))
            labels.extend({"ImageID": image_id, "Source": "verification", "LabelName": m, "Confidence": 0}
                          for m in negatives)
        if subset == "test":
            continue
        df = pd.DataFrame(boxes, columns=list(BOX_COLUMNS))
        write_csv(df, os.path.join(root, "annotations", f"{subset}-annotations-bbox.csv"))
        write_csv(df, os.path.join(root, f"challenge-2019-{subset}-detection-bbox.csv"))
        write_csv(pd.DataFrame(labels, columns=list(IMAGE_LABEL_COLUMNS)),
                   os.path.join(root, "annotations", f"{subset}-annotations-human-imagelabels-boxable.csv"))
    return counts
