"""A local HTTP server for download tests: Range requests, cut connections, stalls, error codes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Resource:
    data: bytes = b""
    status: int = 200  # anything else is answered as an error
    cut_first: int | None = None  # first response stops after this many bytes
    cut_every: int | None = None  # every response stops after this many bytes
    stall_first: int | None = None  # first response sends this many bytes, then hangs
    ignore_range: bool = False
    claimed_length: int | None = None  # Content-Length to announce instead of the real one
    no_length: bool = False  # send no Content-Length: the end of the body is the end of the connection
    requests: list[str | None] = field(default_factory=list)  # Range header of every request


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        res: Resource | None = self.server.resources.get(self.path)  # type: ignore[attr-defined]
        if res is None:
            self.send_error(404, "Not Found")
            return
        res.requests.append(self.headers.get("Range"))
        first = len(res.requests) == 1
        if res.status != 200:
            self.send_error(res.status)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not res.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(res.data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(res.data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(res.data) - 1}/{len(res.data)}")
        else:
            self.send_response(200)
        body = res.data[start:]
        if not res.no_length:
            self.send_header("Content-Length", str(res.claimed_length or len(body)))
        self.end_headers()
        if first and res.cut_first is not None:
            self.wfile.write(body[: res.cut_first])
            self.wfile.flush()
            self.close_connection = True
            return
        if res.cut_every is not None:
            self.wfile.write(body[: res.cut_every])
            self.wfile.flush()
            self.close_connection = True
            return
        if first and res.stall_first is not None:
            self.wfile.write(body[: res.stall_first])
            self.wfile.flush()
            time.sleep(3)
            return
        self.wfile.write(body)


class LocalServer:
    """`with LocalServer() as srv: srv.add('/f', Resource(data)); srv.url('/f')`."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.resources = {}  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, resource: Resource) -> Resource:
        self.httpd.resources[path] = resource  # type: ignore[attr-defined]
        return resource

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
