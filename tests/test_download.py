"""The weights downloader (oid_retinanet.model.download) and its script, against a loopback HTTP server.

The server (http.server in a thread) serves generated files, honours `Range: bytes=N-` with 206 and
Content-Range (416 past the end), and can drop the connection after a given number of body bytes, ignore
Range, or answer 404. Rule: a finished download is byte-identical to the served file, the requests the server
saw are the ones expected (a resume asks for the bytes the .part lacks), and each failure ends in a
DownloadError naming its cause with nothing left under the final name. No outside network is used.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from oid_retinanet.model import download as dl
from oid_retinanet.model.download import DownloadError, WeightFile
from retinanet_training_level_1 import download_weights as script

SIZE = 3 * (1 << 20) + 12345  # several 1 MiB chunks and a ragged end


class LoopbackServer:
    """Files by URL path; `requests` records (path, Range header) of every GET."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, list[int]] = {}  # path -> body byte counts after which to hang up, in turn
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                self.close_connection = True
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.send_header("Connection", "close")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                drops = server.drop_after.get(self.path)
                if drops:
                    self.wfile.write(body[:drops.pop(0)])
                    self.wfile.flush()
                    return  # hang up: the client sees the stream end before Content-Length
                self.wfile.write(body)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client hanging up early (the disk-full tests) is expected

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def entry(self, path: str, **kw) -> WeightFile:
        """A table entry for `path` on this server."""
        return _entry(self.base, path, **kw)


def _entry(base: str, path: str, **kw) -> WeightFile:
    """A table entry for base + path (no size, no checksum unless given)."""
    fields = dict(name="test_file", filename=Path(path).name, url=base + path, backbone="resnet50", year=2018,
                  kind=dl.KIND_INFERENCE, classes=443, approx_mb=None)
    fields.update(kw)
    return WeightFile(**fields)


@pytest.fixture
def payload() -> bytes:
    return np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


@pytest.fixture
def server(payload):
    s = LoopbackServer({"/rel/model.h5": payload})
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_full_download(server, payload, tmp_path):
    dest = dl.download(server.entry("/rel/model.h5", checksum=_sha256(payload), size=len(payload)), tmp_path,
                       progress=False)
    assert dest == tmp_path / "model.h5"
    assert dest.read_bytes() == payload
    assert not dl.part_path(dest).exists()
    assert server.requests == [("/rel/model.h5", None)]


def test_resume_after_dropped_connection(server, payload, tmp_path):
    half = len(payload) // 2
    server.drop_after["/rel/model.h5"] = [half]
    entry = server.entry("/rel/model.h5", checksum=_sha256(payload))
    with pytest.raises(DownloadError, match=rf"interrupted \(connection lost after {half} of {len(payload)} bytes\); "
                                            r"1\.6 MB kept in model\.h5\.part, run again to resume"):
        dl.download(entry, tmp_path, progress=False, retries=0)
    part = dl.part_path(tmp_path / "model.h5")
    assert part.read_bytes() == payload[:half]
    assert not (tmp_path / "model.h5").exists()
    dest = dl.download(entry, tmp_path, progress=False, retries=0)
    assert dest.read_bytes() == payload
    assert server.requests[-1] == ("/rel/model.h5", f"bytes={half}-")
    assert not part.exists()


def test_retries_resume_within_one_call(server, payload, tmp_path):
    cut = [1000, len(payload) // 3]  # two drops: the second one in the middle of the resumed range
    server.drop_after["/rel/model.h5"] = list(cut)
    dest = dl.download(server.entry("/rel/model.h5", checksum=_sha256(payload)), tmp_path, progress=False,
                       retries=2, retry_wait=0)
    assert dest.read_bytes() == payload
    assert [r for _, r in server.requests] == [None, f"bytes={cut[0]}-", f"bytes={cut[0] + cut[1]}-"]


def test_server_ignoring_range_restarts(server, payload, tmp_path):
    server.ignore_range = True
    dl.part_path(tmp_path / "model.h5").write_bytes(b"x" * 5000)  # not a prefix of the file: must be discarded
    dest = dl.download(server.entry("/rel/model.h5"), tmp_path, progress=False)
    assert server.requests == [("/rel/model.h5", "bytes=5000-")]
    assert dest.read_bytes() == payload


def test_complete_part_is_finished_on_416(server, payload, tmp_path):
    dl.part_path(tmp_path / "model.h5").write_bytes(payload)
    dest = dl.download(server.entry("/rel/model.h5", checksum=_sha256(payload)), tmp_path, progress=False)
    assert dest.read_bytes() == payload
    assert server.requests == [("/rel/model.h5", f"bytes={len(payload)}-")]


def test_part_longer_than_file_restarts(server, payload, tmp_path):
    dl.part_path(tmp_path / "model.h5").write_bytes(b"y" * (len(payload) + 7))
    dest = dl.download(server.entry("/rel/model.h5", checksum=_sha256(payload)), tmp_path, progress=False,
                       retries=0)
    assert dest.read_bytes() == payload
    assert server.requests == [("/rel/model.h5", f"bytes={len(payload) + 7}-"), ("/rel/model.h5", None)]


def test_size_mismatch_with_table(server, payload, tmp_path):
    with pytest.raises(DownloadError, match=f"size mismatch: the server offers {len(payload)} bytes .* "
                                            f"expected {len(payload) + 10}"):
        dl.download(server.entry("/rel/model.h5", size=len(payload) + 10), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_size_implausible_against_release_table(server, tmp_path):
    # ~3.2 MB served where the release table says 178 MB (e.g. an error page served with status 200)
    with pytest.raises(DownloadError, match="the release table says about 178 MB"):
        dl.download(server.entry("/rel/model.h5", approx_mb=178), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_removes_download(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        dl.download(server.entry("/rel/model.h5", checksum=_sha256(b"other")), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match=r"^HTTP 404 Not Found: http://127\.0\.0\.1:\d+/rel/missing\.h5$"):
        dl.download(server.entry("/rel/missing.h5"), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_no_network(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry(f"http://127.0.0.1:{port}", "/m.h5")
    with pytest.raises(DownloadError, match=f"cannot reach 127.0.0.1:{port} .*check the network"):
        dl.download(entry, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_disk_full(server, payload, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DownloadError, match=r"disk full: 3\.2 MB still to download, 1\.0 kB free"):
        dl.download(server.entry("/rel/model.h5"), tmp_path, progress=False)
    assert not (tmp_path / "model.h5").exists()


def test_disk_full_while_writing(server, tmp_path, monkeypatch):
    def full(response, fh, bar, remaining):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dl, "_copy_stream", full)
    with pytest.raises(DownloadError, match="disk full while writing"):
        dl.download(server.entry("/rel/model.h5"), tmp_path, progress=False)
    assert not (tmp_path / "model.h5").exists()


def test_present_file_is_skipped(server, tmp_path):
    (tmp_path / "model.h5").write_bytes(b"already here")
    dest = dl.download(server.entry("/rel/model.h5"), tmp_path, progress=False)
    assert dest.read_bytes() == b"already here"
    assert server.requests == []
    # with an exact size in the table, a file of another size is reported, not overwritten
    with pytest.raises(DownloadError, match="already exists with 12 bytes, expected 99"):
        dl.download(server.entry("/rel/model.h5", size=99), tmp_path, progress=False)
    assert server.requests == []


def test_table_matches_readme_release_links():
    """The package's table holds exactly the release links of README.md, with the sizes stated there."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = dict((url, int(mb)) for mb, url in re.findall(
        r"\[(\d+) MB\]\((https://github\.com/ZFTurbo/[^)]+\.h5)\)", readme))
    table = {e.url: e.approx_mb for e in dl.WEIGHT_FILES if e.source == "zfturbo"}
    assert len(table) == 12 and table == links
    for e in dl.WEIGHT_FILES:
        assert e.url.endswith("/" + e.filename)
        assert e.classes == {2018: 443, 2019: 500, None: 1000}[e.year]
        assert ("_converted" in e.filename) == (e.kind == dl.KIND_INFERENCE)


def test_script_download_list_and_errors(server, payload, tmp_path, monkeypatch, capsys):
    entry = WeightFile("resnet50_2018_inference", "model.h5", "https://example.invalid/rel/model.h5", "resnet50",
                       2018, dl.KIND_INFERENCE, 443, None, checksum=_sha256(payload))
    missing = WeightFile("resnet101_2018_inference", "missing.h5", "https://example.invalid/rel/missing.h5",
                         "resnet101", 2018, dl.KIND_INFERENCE, 443, None)
    monkeypatch.setattr(dl, "WEIGHT_FILES", (entry, missing))
    common = ["--models-path", str(tmp_path), "--mirror", server.base + "/rel", "--no-progress"]
    assert script.main(["resnet50_2018_inference", *common]) == 0
    assert (tmp_path / "model.h5").read_bytes() == payload
    assert "resnet50_2018_inference: downloaded" in capsys.readouterr().out
    assert script.main(["--backbone", "resnet50", "--verify", *common]) == 0
    assert "resnet50_2018_inference: present" in capsys.readouterr().out
    assert len(server.requests) == 1
    assert script.main(["--list", *common]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert re.match(r"resnet50_2018_inference +443 +\? +present 3\.2 MB +model\.h5$", listing[1])
    assert re.match(r"resnet101_2018_inference +443 +\? +absent +missing\.h5$", listing[2])
    assert script.main(["resnet101_2018_inference", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: HTTP 404 Not Found")
    assert script.main(["resnet152_2019_training", *common]) == 2
    assert "unknown weights file 'resnet152_2019_training'" in capsys.readouterr().err


def test_fetch_imagenet_checks_md5(server, tmp_path):
    pytest.importorskip("keras")
    from oid_retinanet.model.imagenet import fetch_imagenet_weights

    # the server's file is not fizyr's ResNet-50 file: its md5 (from keras-retinanet) must reject it
    server.files["/mirror/ResNet-50-model.keras.h5"] = b"not the ImageNet weights"
    with pytest.raises(DownloadError, match="md5 mismatch: got [0-9a-f]{32}, expected "
                                            "3e9f4e4f77bbe2c9bec13b53ee1c2319"):
        fetch_imagenet_weights(50, "fizyr", tmp_path, progress=False, mirror=server.base + "/mirror")
    assert list(tmp_path.iterdir()) == []
