"""A TCP proxy on 127.0.0.1 in front of a PostgreSQL server that can lose the answer to a
COMMIT: it passes the COMMIT on (so it lands), then drops the connection before the server's
reply reaches the client, which cannot know whether its transaction was committed. That is the
moment a database restart or a failover can hit; the ledger's repeats must be safe after it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

# psycopg commits with a simple Query message: 'Q', its int32 length (4 + 7), "COMMIT\0".
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class LossyProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.commits_to_lose = 0  # the next N COMMITs land, their answers are lost
        self.lost = 0
        self._lock = threading.Lock()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self._target)
            armed = threading.Event()  # set: this connection's COMMIT went; lose the answer
            threading.Thread(target=self._up, args=(client, server, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, armed), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, armed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if COMMIT in data and self._take_one():
                    armed.set()
                server.sendall(data)
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if armed.is_set():  # the COMMIT's answer: never delivered
                    break
                client.sendall(data)
        _close(client, server)

    def _take_one(self) -> bool:
        with self._lock:
            if self.commits_to_lose <= 0:
                return False
            self.commits_to_lose -= 1
            self.lost += 1
            return True

    def close(self) -> None:
        self._listener.close()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@contextlib.contextmanager
def lossy_proxy(host: str, port: int) -> Iterator[LossyProxy]:
    proxy = LossyProxy(host, port)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
