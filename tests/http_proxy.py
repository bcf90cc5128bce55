"""A forwarding HTTP proxy on loopback for tests, and a record of what it carried.

It speaks the two ways clients use a proxy: an absolute-form request (`POST http://host:port/path`,
what HTTP_PROXY gets for http:// URLs), forwarded to its host with the path in origin form, and
`CONNECT host:port` (what HTTPS_PROXY gets for https:// URLs), answered with a tunnel. After the
request line it only relays bytes both ways, so a streamed answer reaches the client as it arrives,
and a client that goes away closes the upstream connection too (a server sees the cancel).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit


class LoopbackProxy:
    """`with LoopbackProxy() as proxy:` listens on 127.0.0.1; `proxy.url` for HTTP_PROXY; `proxy.requests`
    holds each request line it forwarded ("POST http://127.0.0.1:8080/v1/chat/completions", "CONNECT ...")."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="test-proxy", daemon=True).start()

    def __enter__(self) -> LoopbackProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._listener.close()
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._open.append(client)
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                client.close()
                return
            head += data
        head, _, body = head.partition(b"\r\n\r\n")
        request_line, _, headers = head.partition(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ")
        self.requests.append(f"{method} {target}")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            upstream = socket.create_connection((url.hostname, url.port or 80))
            path = url.path + (f"?{url.query}" if url.query else "")
            upstream.sendall(f"{method} {path or '/'} {version}\r\n".encode("latin-1") + headers + b"\r\n\r\n" + body)
        self._open.append(upstream)
        back = threading.Thread(target=_relay, args=(upstream, client), daemon=True)
        back.start()
        _relay(client, upstream)
        with contextlib.suppress(OSError):  # the client went away: so does the server's connection
            upstream.shutdown(socket.SHUT_RDWR)
        back.join(10)
        client.close()
        upstream.close()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until `source` ends or fails, then end `sink`'s sending side."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
