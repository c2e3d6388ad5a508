#!/usr/bin/python3
"""The admin API against clients that try to lock lbd out or eat its memory.

 1. Connections that send nothing: 64 of them (lbd's global cap) used to
    refuse every further connection, token or not, for the 5 minute idle
    timeout, with a WARN line per refusal.  Now the operator gets in at
    once, the silent ones are closed after the first-request deadline, and
    lbd says so in a line per second at most.
 2. Half-sent messages: 4 connections x 32 streams each announcing a 4 MiB
    message, sending most of it and stalling, took lbd from 38 MB to
    817 MB.  Now RSS stays within +64 MB, the stalled calls are reset, and
    the memory is given back once the attacker has gone.
 3. The operator in the same accept run as a flood: with lbd busy (here:
    stopped) while 64 silent connections from four other addresses and 20
    from the operator's own queue up with lbctl's behind them, lbctl was
    refused (every slot was taken in that run, and connections of the
    current run were never shed).  Now a newcomer from an address holding
    two fewer connections takes a slot of the heaviest address even within
    the run, and lbctl tries once more when lbd closes a connection before
    answering anything, so the call goes through.

The attacker speaks HTTP/2 by hand (preface, SETTINGS, HPACK literals,
DATA within the flow-control windows lbd grants), so it can stop halfway
through a message, which no gRPC library lets a client do.
"""

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, backend_key, close_all,  # noqa: E402
                    scaled, silent_connections, wait_until)
from lbtest.procs import lbctl_binary  # noqa: E402

PREFIX = "/lbtest-adminabuse/"
LIST_POOLS = "/lb.v1.Admin/ListPools"
MIB = 1024 * 1024


def connections_to(port):
    """Established TCP connections whose remote end is 127.0.0.1:`port` (clients of it)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[2] == "0100007F:%04X" % port and fields[3] == "01":
                n += 1
    return n


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS for %d" % pid)


# ------------------------------------------------------------- raw HTTP/2

def _hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack(headers):
    """Literal header fields without indexing, new names, no Huffman."""
    out = b""
    for name, value in headers:
        out += b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value
    return out


def _frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8


class StallingClient:
    """One HTTP/2 connection whose streams each announce a `declared`-byte gRPC message,
    send `sent` bytes of it within lbd's flow-control windows, and then stall."""

    def __init__(self, port, streams, declared, sent, path="/lb.v1.Admin/ListBackends"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lock = threading.Condition()
        self.conn_window = 65535
        self.initial_window = 65535
        self.windows = {}
        self.closed = set()  # streams lbd ended (END_STREAM headers or RST_STREAM)
        self.gone = False
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        headers = _hpack([(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                          (b":authority", b"lbd"), (b"content-type", b"application/grpc"),
                          (b"te", b"trailers")])
        self.ids = [1 + 2 * i for i in range(streams)]
        for sid in self.ids:
            with self.lock:
                self.windows[sid] = self.initial_window
            self.sock.sendall(_frame(HEADERS, 0x4, sid, headers))  # END_HEADERS
        self.declared, self.sent = declared, sent
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.writer.start()

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _read(self):
        try:
            while True:
                head = self._recv_exact(9)
                length = int.from_bytes(head[:3], "big")
                ftype, flags = head[3], head[4]
                sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = self._recv_exact(length) if length else b""
                with self.lock:
                    if ftype == SETTINGS and not flags & 1:
                        for i in range(0, len(payload), 6):
                            ident, value = struct.unpack(">HI", payload[i:i + 6])
                            if ident == 4:  # INITIAL_WINDOW_SIZE
                                delta = value - self.initial_window
                                self.initial_window = value
                                for k in self.windows:
                                    self.windows[k] += delta
                        self.sock.sendall(_frame(SETTINGS, 1, 0))
                    elif ftype == WINDOW_UPDATE:
                        inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                        if sid == 0:
                            self.conn_window += inc
                        elif sid in self.windows:
                            self.windows[sid] += inc
                    elif ftype == PING and not flags & 1:
                        self.sock.sendall(_frame(PING, 1, 0, payload))
                    elif ftype == RST_STREAM or (ftype == HEADERS and flags & 1):
                        self.closed.add(sid)
                    self.lock.notify_all()
        except (OSError, EOFError):
            with self.lock:
                self.gone = True
                self.lock.notify_all()

    def _write(self):
        try:
            for sid in self.ids:
                body = struct.pack(">BI", 0, self.declared) + b"\x0a" * (self.sent - 5)
                off = 0
                while off < len(body):
                    with self.lock:
                        while not self.gone and sid not in self.closed and \
                                min(self.conn_window, self.windows[sid]) <= 0:
                            self.lock.wait(0.5)
                        if self.gone:
                            return
                        if sid in self.closed:
                            break  # lbd refused or reset it: on to the next stream
                        n = min(16384, len(body) - off, self.conn_window, self.windows[sid])
                        self.conn_window -= n
                        self.windows[sid] -= n
                    self.sock.sendall(_frame(DATA, 0, sid, body[off:off + n]))  # no END_STREAM
                    off += n
        except OSError:
            pass

    def streams_ended(self):
        with self.lock:
            return len(self.closed)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class AdminAbuse(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.token = "lbtest-adminabuse-token"
        cls.token_file = h.path("admin.token")
        with open(cls.token_file, "w") as f:
            f.write(cls.token + "\n")
        os.chmod(cls.token_file, 0o600)
        cls.etcd = Etcd(h).start()
        cls.backend = Backend(h, "w1")
        cls.etcd.put(backend_key(PREFIX, "web", "w1"), '{"addr":"%s"}' % cls.backend.addr)
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, ["web"], name="lbd-token",
                      extra_args=["--admin-token-file", cls.token_file,
                                  "--shutdown-grace", "1s"]).start()
        # no token: every call is let in, the hardest case for memory
        # (in the sanitizer build, freed memory would wait in ASan's quarantine: RSS
        # could not come back, so the quarantine is off for this lbd)
        asan = ":".join(o for o in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=0") if o)
        cls.open_lbd = Lbd(h, cls.etcd.url, PREFIX, ["web"], name="lbd-open",
                           extra_args=["--shutdown-grace", "1s"],
                           env={"ASAN_OPTIONS": asan}).start()

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)
        cls.open_lbd.stop(expect_rc=0)

    def lbctl_pools(self, lbd, token=True):
        args = (["--admin-token-file", self.token_file] if token else []) + ["pools"]
        t0 = time.monotonic()
        rc, out, err = lbd.ctl(*args, timeout=30)
        return rc, time.monotonic() - t0, err

    def test_1_silent_connections_do_not_lock_out_the_operator(self):
        before = self.lbd.log_text()
        silent = []
        try:
            for i in range(64):  # the global cap, all from the operator's own address
                silent.append(socket.create_connection(("127.0.0.1", self.lbd.admin_port)))
            for i in range(64):  # and as many more from other loopback addresses
                s = socket.socket()
                s.bind(("127.0.0.%d" % (2 + i % 4), 0))
                s.connect(("127.0.0.1", self.lbd.admin_port))
                silent.append(s)
            for _ in range(5):
                rc, took, err = self.lbctl_pools(self.lbd)
                self.assertEqual(rc, 0, err)
                self.assertLess(took, 2.0)
            with grpc.insecure_channel(self.lbd.admin) as ch:
                ch.unary_unary(LIST_POOLS)(b"", timeout=5,
                                           metadata=(("authorization", "Bearer " + self.token),))
            # the silent ones are closed by the first-request deadline (5 s)
            deadline = time.monotonic() + 10
            for s in silent:
                try:
                    while True:  # lbd's SETTINGS (and GOAWAY), then the end
                        s.settimeout(max(0.1, deadline - time.monotonic()))
                        if not s.recv(4096):
                            break
                except ConnectionResetError:
                    pass
        finally:
            for s in silent:
                s.close()
        text = self.lbd.log_text()[len(before):]
        self.assertIn("admin connections closed to make room", text)
        self.assertIn("admin connections closed: no request within the first-request deadline",
                      text)
        warns = [ln for ln in text.splitlines() if "level=warn" in ln and "sub=admin" in ln]
        self.assertLessEqual(len(warns), 12, "one line per second at most:\n" + "\n".join(warns))

    def test_2_half_sent_messages_cannot_eat_memory(self):
        lbd = self.open_lbd
        pid = lbd.proc.pid
        base = rss_mb(pid)
        attackers = [StallingClient(lbd.admin_port, streams=32, declared=4 * MIB,
                                    sent=4 * MIB - 256 * 1024) for _ in range(4)]
        peak = base
        try:
            t_end = time.monotonic() + 14  # past the 10 s request deadline
            operator_ok = 0
            while time.monotonic() < t_end:
                peak = max(peak, rss_mb(pid))
                rc, took, err = self.lbctl_pools(lbd, token=False)
                self.assertEqual(rc, 0, err)
                operator_ok += 1
                time.sleep(0.2)
            ended = sum(a.streams_ended() for a in attackers)
        finally:
            for a in attackers:
                a.close()
        print("\n  RSS %.1f MB before, %.1f MB at the peak of the attack; %d of 128 stalled "
              "streams ended by lbd; %d operator calls" % (base, peak, ended, operator_ok))
        self.assertLess(peak - base, 64, "RSS grew by %.1f MB" % (peak - base))
        self.assertGreaterEqual(ended, 128 - 4 * 2, "stalled streams not ended by lbd")
        self.assertIn("admin calls reset: request not received in time", lbd.log_text())
        # once the attacker has gone, the memory is given back
        wait_until(lambda: rss_mb(pid) - base < 16, scaled(10),
                   "lbd's RSS to come back near %.1f MB" % base)
        self.assertTrue(lbd.proc.alive())

    def test_3_operator_in_the_same_accept_run_as_a_flood_gets_in(self):
        lbd = self.lbd
        before = lbd.log_text()
        silent = []
        ctl = None
        try:
            with lbd.proc.stopped():
                silent += silent_connections(lbd.admin_port, 64)  # 127.0.0.2 to .5
                silent += silent_connections(lbd.admin_port, 20, first=1, addresses=1)  # and ours
                ctl = subprocess.Popen([lbctl_binary(), "--admin", lbd.admin,
                                        "--admin-token-file", self.token_file, "pools"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                wait_until(lambda: connections_to(lbd.admin_port) >= len(silent) + 1, scaled(10),
                           "lbctl's connection to wait in lbd's accept queue behind the flood")
            out, err = ctl.communicate(timeout=scaled(20))
            self.assertEqual(ctl.returncode, 0, "lbctl was locked out: " + err)
            self.assertIn("web", out)
        finally:
            if ctl and ctl.poll() is None:
                ctl.kill()
                ctl.wait()
            close_all(silent)
        text = lbd.log_text()[len(before):]
        self.assertIn("admin connections closed to make room", text)
        self.assertTrue(lbd.proc.alive())


if __name__ == "__main__":
    lbtest.main()
