"""A tiny CUB-layout archive and an HTTP server on 127.0.0.1 that serves it (tests only).

The server speaks enough HTTP for a real download: Content-Length, byte ranges (206) and
416 past the end; ``cut[path] = n`` makes the next response for ``path`` stop after n
bytes and close the connection (an interrupted transfer). ``requests`` records
(path, Range header) of every request.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import pathlib
import tarfile
import threading


def cub_archive(tmp: pathlib.Path, classes: int = 3, train: int = 4, test: int = 2, size: int = 48) -> bytes:
    """A .tgz with CUB_200_2011/ in CUB-200-2011's layout (fgnb's synthetic generator)."""
    from fgnb.synthetic import generate

    root = generate(tmp / "CUB_200_2011", num_classes=classes, train_per_class=train, test_per_class=test, size=size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root, arcname="CUB_200_2011")
        info = tarfile.TarInfo("attributes.txt")  # the real archive has a file beside the folder too
        info.size = 3
        tar.addfile(info, io.BytesIO(b"1 a"))
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = outer.cut.pop(self.path, None)
                self.wfile.write(body if n is None else body[:n])
                if n is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
