"""The downloader against a real HTTP server on 127.0.0.1 (never the internet)."""

import contextlib
import errno
import functools
import hashlib
import http.server
import logging
import socket
import threading

import pytest

import minigpt.data
from minigpt import MiniGPTError, download, ensure_tinyshakespeare
from minigpt.data import TINYSHAKESPEARE_SHA256, prepared_text, tinyshakespeare_path


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www over HTTP on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def test_a_good_file_is_saved_a_wrong_or_missing_one_not(server, tmp_path):
    base, root = server
    (root / "a.txt").write_bytes(b"hello shakespeare\n" * 1000)
    dest = tmp_path / "cache" / "a.txt"
    download(f"{base}/a.txt", dest, hashlib.sha256(b"hello shakespeare\n" * 1000).hexdigest())
    assert dest.read_bytes() == b"hello shakespeare\n" * 1000
    assert [p.name for p in dest.parent.iterdir()] == ["a.txt"]  # no temporary left behind
    (root / "b.txt").write_bytes(b"tampered")
    with pytest.raises(MiniGPTError, match="sha256.*not saved.*--text PATH"):
        download(f"{base}/b.txt", dest.parent / "b.txt", "0" * 64)
    assert [p.name for p in dest.parent.iterdir()] == ["a.txt"]
    wrong_tail = hashlib.sha256(b"tampered").hexdigest()  # the 12 digits the message shows
    wrong_tail = wrong_tail[:12] + ("0" if wrong_tail[12] != "0" else "1") + wrong_tail[13:]
    with pytest.raises(MiniGPTError, match="sha256"):  # match, not just agree where shown
        download(f"{base}/b.txt", dest.parent / "b.txt", wrong_tail)
    assert [p.name for p in dest.parent.iterdir()] == ["a.txt"]
    with pytest.raises(MiniGPTError, match="404"):  # a file missing on the server
        download(f"{base}/nope.txt", tmp_path / "x.txt", "0" * 64)


@contextlib.contextmanager
def serving(body: bytes, length: int | None):
    """A server on 127.0.0.1 that answers any GET with `body`, promising `length` bytes (None:
    no Content-Length, HTTP/1.0's way, the body ending as the connection closes); yields a URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/a.txt"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("sent", [500, 999])  # (999: the last byte missing is as short)
def test_a_body_cut_short_is_said_so_not_as_a_checksum(tmp_path, sent):
    """The connection closed before all the promised bytes: the count says what happened (the
    checksum alone read like a wrong file)."""
    dest = tmp_path / "cache" / "a.txt"
    with serving(b"x" * sent, 1000) as url, pytest.raises(
            MiniGPTError, match=rf"stopped after {sent} of 1,000 bytes \(the connection closed "
                                r"early\); not saved"):
        download(url, dest, "0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_server_down_is_one_line_error(tmp_path):
    dest = tmp_path / "cache" / "a.txt"
    with socket.socket() as s:  # a port held, but not listened on: a connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(MiniGPTError, match="cannot download") as e:
            download(f"http://127.0.0.1:{port}/input.txt", dest, "0" * 64, timeout=5)
    assert "\n" not in str(e.value) and str(dest) in str(e.value)
    assert not dest.exists()


def test_tinyshakespeare_downloaded_into_the_cache(server, tmp_path, monkeypatch,
                                                   tinyshakespeare_source, caplog):
    base, root = server
    (root / "input.txt").write_bytes(tinyshakespeare_source.read_bytes())
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "fresh-cache"))
    with caplog.at_level(logging.INFO, logger="minigpt"):  # said before the wait, not after
        path = ensure_tinyshakespeare(f"{base}/input.txt")
    assert caplog.messages == [f"downloading TinyShakespeare (1.1 MB) from {base}/input.txt "
                               f"into {path.parent}"]
    assert path.stat().st_size / 1e6 == pytest.approx(1.1, abs=0.05)
    assert path == tinyshakespeare_path() == tmp_path / "fresh-cache/tinyshakespeare/input.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TINYSHAKESPEARE_SHA256
    (root / "input.txt").unlink()
    assert ensure_tinyshakespeare(f"{base}/input.txt") == path  # cached: no second download


def test_a_body_with_no_promised_length_is_read_to_its_end(tmp_path):
    """No Content-Length: there is no count to hold the body to; the checksum alone judges it."""
    body = b"hello shakespeare\n" * 1000
    dest = tmp_path / "cache" / "a.txt"
    with serving(body, None) as url:
        download(url, dest, hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body


def test_a_cache_that_cannot_be_written_is_said_so_not_as_a_failed_download(tmp_path,
                                                                            monkeypatch):
    """A data cache under a file (or on a read-only home): it said 'cannot download ...; copy
    the file to <the cache> by hand', advice that could not work, for TinyShakespeare and for
    a text's token cache alike."""
    (tmp_path / "notes.txt").write_text("not a folder")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "notes.txt" / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("some text to train on\n" * 20)
    for make in (lambda: ensure_tinyshakespeare("http://127.0.0.1:9/never-asked"),
                 lambda: prepared_text(text)):
        with pytest.raises(MiniGPTError) as e:
            make()
        assert str(e.value).startswith(f"cannot write the data cache {tmp_path}/notes.txt/cache/")
        assert str(e.value).endswith("(Not a directory); set MINIGPT_DATA_DIR to a folder you "
                                     "can write")


def test_a_cache_folder_that_exists_but_takes_no_file_is_said_so(tmp_path, monkeypatch):
    """A read-only cache folder: making it succeeds (it is there), writing in it does not.
    (Root writes anywhere, so the refusal is the temporary file's, as a read-only folder
    gives it.)"""
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(minigpt.data.tempfile, "TemporaryFile", refused)
    with pytest.raises(MiniGPTError) as e:
        ensure_tinyshakespeare("http://127.0.0.1:9/never-asked")
    assert str(e.value).startswith(f"cannot write the data cache {tmp_path}/cache")
    assert str(e.value).endswith("(Permission denied); set MINIGPT_DATA_DIR to a folder you "
                                 "can write")
