#!/usr/bin/python3
"""Many cheap backends in one process, for benchmarks with thousands of
registered backends and their health checks.

    echo_fleet.py ID=127.0.0.1:PORT [ID=127.0.0.1:PORT ...]

Each listener says "<ID>\\n" on every accepted connection, then echoes what
it reads, like lbtest's Backend, but from one thread with a selector, so ten
thousand health checks a second cost little.  SIGUSR1 closes every listener
(connects are refused: every backend fails its checks), SIGUSR2 opens them
again on the same ports; SIGTERM exits.  One line "ready" on stdout once
listening.
"""

import selectors
import signal
import socket
import sys


class Fleet:
    def __init__(self, specs):
        self.specs = specs  # [(id, host, port)]
        self.sel = selectors.DefaultSelector()
        self.listeners = []
        self.pending_signal = None
        self.running = True

    def open(self):
        for bid, host, port in self.specs:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(4096)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("listen", bid.encode() + b"\n"))
            self.listeners.append(s)

    def close(self):
        for s in self.listeners:
            self.sel.unregister(s)
            s.close()
        self.listeners = []

    def on_signal(self, signum, frame):
        self.pending_signal = signum

    def drop(self, conn):
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def run(self):
        self.open()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while self.running:
            for key, _ in self.sel.select(timeout=0.2):
                kind, data = key.data
                if kind == "listen":
                    for _ in range(64):
                        try:
                            conn, _ = key.fileobj.accept()
                        except (BlockingIOError, OSError):
                            break
                        conn.setblocking(False)
                        try:
                            conn.send(data)
                        except OSError:
                            conn.close()
                            continue
                        self.sel.register(conn, selectors.EVENT_READ, ("conn", None))
                else:
                    conn = key.fileobj
                    try:
                        chunk = conn.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        self.drop(conn)
                        continue
                    if not chunk:
                        self.drop(conn)
                        continue
                    try:
                        conn.sendall(chunk)  # small echoes: fits the socket buffer
                    except OSError:
                        self.drop(conn)
            sig, self.pending_signal = self.pending_signal, None
            if sig == signal.SIGUSR1 and self.listeners:
                self.close()
            elif sig == signal.SIGUSR2 and not self.listeners:
                self.open()
            elif sig == signal.SIGTERM:
                self.running = False


def main():
    specs = []
    for arg in sys.argv[1:]:
        bid, addr = arg.split("=", 1)
        host, port = addr.rsplit(":", 1)
        specs.append((bid, host, int(port)))
    fleet = Fleet(specs)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, fleet.on_signal)
    fleet.run()


if __name__ == "__main__":
    main()
