"""A small keep-alive HTTP/1.1 load generator over raw sockets (one connection per worker).

Kept deliberately lean so that the relay, not the client, is what is measured; the same
client measures the trivial twisted.web resource, whose rate is the framework ceiling.
"""

from __future__ import annotations

import socket


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.host = f"{host}:{port}".encode()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.sock.sendall(b"POST /" + path.encode() + b" HTTP/1.1\r\nHost: " + self.host +
                          b"\r\nContent-Type: text/plain\r\nContent-Length: " +
                          str(len(body)).encode() + b"\r\n\r\n" + body)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()
