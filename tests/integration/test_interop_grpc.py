#!/usr/bin/python3
"""lbd's admin API spoken by an independent gRPC client (python3-grpcio).

No generated stubs: the test encodes and decodes the lb.v1 messages by hand
(proto/lb/v1/admin.proto) with the small protobuf codec below, so it checks
the wire format lbctl and lbd agree on against a third implementation.
"""

import json
import os
import socket
import struct
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, ask_many, backend_key,  # noqa: E402
                    override_key, scaled, wait_until)

PREFIX = "/lbtest-grpc/"
SCOPE_CLUSTER, SCOPE_LOCAL = 0, 1

# ---------------------------------------------------------------------------
# A tiny protobuf codec: varint and length-delimited fields are all lb.v1 uses.


def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_uint(field, value):
    return _varint(field << 3 | 0) + _varint(int(value))


def pb_bytes(field, value):
    if isinstance(value, str):
        value = value.encode()
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _read_varint(buf, i):
    shift, n = 0, 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def pb_decode(buf):
    """{field number: [values]}: ints for varints, bytes for length-delimited."""
    fields, i = {}, 0
    while i < len(buf):
        tag, i = _read_varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated length-delimited field %d" % field)
            v, i = bytes(buf[i:i + n]), i + n
        elif wire == 1:
            v, i = struct.unpack_from("<Q", buf, i)[0], i + 8
        elif wire == 5:
            v, i = struct.unpack_from("<I", buf, i)[0], i + 4
        else:
            raise ValueError("wire type %d" % wire)
        fields.setdefault(field, []).append(v)
    return fields


BACKEND_FIELDS = {  # lb.v1.Backend
    1: ("pool", str), 2: ("id", str), 3: ("addr", str), 4: ("zone", str), 5: ("weight", int),
    6: ("effective_weight", int), 7: ("drain", bool), 8: ("drained", bool), 9: ("health", int),
    10: ("health_override", int), 11: ("weight_override", int), 12: ("active_connections", int),
    13: ("total_connections", int), 14: ("connect_failures", int), 15: ("bytes_in", int),
    16: ("bytes_out", int), 17: ("state", int),
}

# lb.v1.Event.Type and lb.v1.BackendState values the tests look for
EVENT_BACKEND_CHANGED, EVENT_HEALTH_CHANGED, EVENT_DRAINED = 2, 5, 6
EVENT_CURRENT, EVENT_SYNCED = 7, 8
STATE_UP, STATE_DRAINED = 1, 6


def decode_event(buf):
    f = pb_decode(buf)
    return {"type": f.get(1, [0])[-1], "pool": f.get(2, [b""])[-1].decode(),
            "id": f.get(3, [b""])[-1].decode(),
            "backend": decode_backend(f[4][-1]) if 4 in f else None,
            "detail": f.get(6, [b""])[-1].decode()}


def decode_backend(buf):
    f = pb_decode(buf)
    out = {name: (False if typ is bool else "" if typ is str else 0)
           for name, typ in BACKEND_FIELDS.values()}
    out.pop("weight_override")  # oneof: absent unless set
    for num, (name, typ) in BACKEND_FIELDS.items():
        if num in f:
            v = f[num][-1]
            out[name] = v.decode() if typ is str else bool(v) if typ is bool else v
    return out


def list_backends_request(pool=""):
    return pb_bytes(1, pool) if pool else b""


def set_drain_request(pool, backend_id, drain, scope=None):
    msg = pb_bytes(1, pool) + pb_bytes(2, backend_id)
    if drain:
        msg += pb_uint(3, 1)
    if scope is not None:
        msg += pb_uint(4, scope)
    return msg


# ---------------------------------------------------------------------------


class AdminInterop(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        cls.servers = {i: Backend(h, i) for i in ("w1", "w2", "w3", "d1")}
        cls.pool_of = {"w1": "web", "w2": "web", "w3": "web", "d1": "db"}
        for i, pool in cls.pool_of.items():
            cls.etcd.put(backend_key(PREFIX, pool, i),
                         json.dumps({"addr": cls.servers[i].addr, "weight": 100, "zone": "z1"}))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, ["web", "db"],
                      extra_args=["--shutdown-grace", "2s"]).start()
        wait_until(lambda: set(cls.lbd.backends()) == set(cls.pool_of), scaled(10),
                   "lbctl backends to list %s" % sorted(cls.pool_of))
        cls.channel = grpc.insecure_channel(cls.lbd.admin)

    @classmethod
    def tearDownWorld(cls):
        cls.channel.close()
        cls.lbd.stop(expect_rc=0)

    def call(self, method, request=b"", channel=None, timeout=10):
        fn = (channel or self.channel).unary_unary(method)
        return fn(request, timeout=timeout)

    def assert_code(self, code, method, request=b""):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(method, request)
        self.assertEqual(cm.exception.code(), code,
                         "%s: %s %r" % (method, cm.exception.code(), cm.exception.details()))
        return cm.exception

    def grpc_backends(self, pool=""):
        resp = self.call("/lb.v1.Admin/ListBackends", list_backends_request(pool))
        return [decode_backend(b) for b in pb_decode(resp).get(1, [])]

    def assert_lbd_answers(self):
        self.assertTrue(self.lbd.proc.alive(), "lbd died:\n" + self.lbd.proc.log_tail(40))
        self.assertEqual(self.lbd.http_get("/healthz")[0], 200)
        fresh = grpc.insecure_channel(self.lbd.admin)
        try:
            resp = self.call("/lb.v1.Admin/ListBackends", b"", channel=fresh)
        finally:
            fresh.close()
        self.assertEqual(len(pb_decode(resp).get(1, [])), len(self.pool_of))

    # -------------------------------------------------------------------

    def test_list_backends_matches_lbctl_json(self):
        for pool in ("web", "db", None):
            via_grpc = self.grpc_backends(pool or "")
            via_ctl = self.lbd.backends(pool)
            self.assertEqual(
                {(b["id"], b["addr"], b["drain"]) for b in via_grpc},
                {(i, b["addr"], bool(b.get("drain"))) for i, b in via_ctl.items()},
                "pool %s" % pool)
            want = {i for i, p in self.pool_of.items() if pool in (None, p)}
            self.assertEqual({b["id"] for b in via_grpc}, want)
            for b in via_grpc:
                self.assertEqual(b["pool"], self.pool_of[b["id"]])
                self.assertEqual(b["addr"], self.servers[b["id"]].addr)
                self.assertEqual(b["weight"], 100)
                self.assertEqual(b["zone"], "z1")

    def test_get_backend_and_not_found(self):
        resp = self.call("/lb.v1.Admin/GetBackend", pb_bytes(1, "web") + pb_bytes(2, "w3"))
        b = decode_backend(pb_decode(resp)[1][0])
        self.assertEqual((b["pool"], b["id"], b["addr"]), ("web", "w3", self.servers["w3"].addr))
        self.assert_code(grpc.StatusCode.NOT_FOUND, "/lb.v1.Admin/GetBackend",
                         pb_bytes(1, "web") + pb_bytes(2, "nope"))
        self.assert_code(grpc.StatusCode.NOT_FOUND, "/lb.v1.Admin/SetDrain",
                         set_drain_request("web", "nope", True, SCOPE_LOCAL))

    def test_set_drain_local_scope(self):
        resp = self.call("/lb.v1.Admin/SetDrain", set_drain_request("web", "w1", True, SCOPE_LOCAL))
        b = decode_backend(pb_decode(resp)[1][0])
        self.assertEqual((b["id"], b["drain"]), ("w1", True))
        self.assertTrue(self.lbd.backends("web")["w1"].get("drain"))
        self.assertIsNone(self.etcd.get(override_key(PREFIX, "web", "w1")),
                          "LOCAL scope must not write the override key")
        counts = ask_many(self.lbd.pool_port("web"), 20)
        self.assertNotIn("w1", counts, "drained w1 got connections: %r" % counts)

        self.call("/lb.v1.Admin/SetDrain", set_drain_request("web", "w1", False, SCOPE_LOCAL))
        self.assertFalse(self.lbd.backends("web")["w1"].get("drain"))
        counts = ask_many(self.lbd.pool_port("web"), 30)
        self.assertIn("w1", counts, "undrained w1 gets connections again: %r" % counts)

    def test_set_drain_default_cluster_scope(self):
        resp = self.call("/lb.v1.Admin/SetDrain", set_drain_request("web", "w2", True))
        b = decode_backend(pb_decode(resp)[1][0])
        self.assertEqual((b["id"], b["drain"]), ("w2", True))
        self.assertTrue(self.lbd.backends("web")["w2"].get("drain"))
        key = override_key(PREFIX, "web", "w2")
        stored = self.etcd.get(key)
        self.assertIsNotNone(stored, "CLUSTER scope writes %s" % key)
        self.assertIs(json.loads(stored).get("drain"), True, stored)

        self.call("/lb.v1.Admin/SetDrain", set_drain_request("web", "w2", False, SCOPE_CLUSTER))
        self.assertFalse(self.lbd.backends("web")["w2"].get("drain"))
        stored = self.etcd.get(key)
        self.assertFalse(stored is not None and json.loads(stored).get("drain"),
                         "override still drains after undrain: %r" % stored)

    def test_watch_events_one_per_change(self):
        """WatchEvents with initial_state: d1 as it is, SYNCED, then exactly one
        event per change (the etcd echo of a CLUSTER override is not a second
        one), each carrying the state after it and saying what changed."""
        stream = self.channel.unary_stream("/lb.v1.Admin/WatchEvents")(
            pb_bytes(1, "db") + pb_uint(2, 1), timeout=60)
        events, lock = [], threading.Lock()

        def read():
            try:
                for msg in stream:
                    with lock:
                        events.append(decode_event(msg))
            except grpc.RpcError:
                pass  # cancelled at the end

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.addCleanup(stream.cancel)

        def changes():  # health checks come and go on their own
            with lock:
                return [e for e in events if e["type"] not in (EVENT_CURRENT, EVENT_SYNCED,
                                                               EVENT_HEALTH_CHANGED)]

        wait_until(lambda: any(e["type"] == EVENT_SYNCED for e in list(events)), scaled(5),
                   "the initial state and SYNCED")
        with lock:
            initial = list(events)
        self.assertEqual([(e["type"], e["id"]) for e in initial],
                         [(EVENT_CURRENT, "d1"), (EVENT_SYNCED, "")], initial)
        self.assertEqual(initial[0]["backend"]["state"], STATE_UP, initial)

        steps = [
            (set_drain_request("db", "d1", True, SCOPE_CLUSTER), "/lb.v1.Admin/SetDrain",
             STATE_DRAINED, "drained by operator (cluster override)"),
            (set_drain_request("db", "d1", False, SCOPE_CLUSTER), "/lb.v1.Admin/SetDrain",
             STATE_UP, "undrained by operator (cluster override)"),
            (pb_bytes(1, "db") + pb_bytes(2, "d1") + pb_uint(3, 50), "/lb.v1.Admin/SetWeight",
             STATE_UP, "weight 100 -> 50 by operator (cluster override)"),
            (pb_bytes(1, "db") + pb_bytes(2, "d1") + pb_uint(4, 1), "/lb.v1.Admin/SetWeight",
             STATE_UP, "weight 50 -> 100 by operator (cluster override)"),
            (set_drain_request("db", "d1", True, SCOPE_LOCAL), "/lb.v1.Admin/SetDrain",
             STATE_DRAINED, "drained by operator (local override, this lbd only)"),
            (set_drain_request("db", "d1", False, SCOPE_LOCAL), "/lb.v1.Admin/SetDrain",
             STATE_UP, "undrained by operator (local override, this lbd only)"),
        ]
        for n, (request, method, state, detail) in enumerate(steps, 1):
            self.call(method, request)
            wait_until(lambda: len(changes()) >= n, scaled(5), "an event for %s" % detail)
            time.sleep(0.5)  # the etcd watch echoes a CLUSTER write within milliseconds
            got = changes()
            self.assertEqual(len(got), n, "one event per change, after %r: %r" % (detail, got))
            self.assertEqual((got[-1]["id"], got[-1]["detail"], got[-1]["backend"]["state"]),
                             ("d1", detail, state), got[-1])
        self.assertEqual([e["type"] for e in changes()],
                         [EVENT_DRAINED, EVENT_BACKEND_CHANGED, EVENT_BACKEND_CHANGED,
                          EVENT_BACKEND_CHANGED, EVENT_DRAINED, EVENT_BACKEND_CHANGED])

    def test_unknown_method_is_unimplemented(self):
        self.assert_code(grpc.StatusCode.UNIMPLEMENTED, "/lb.v1.Admin/NoSuchMethod")
        self.assert_code(grpc.StatusCode.UNIMPLEMENTED, "/lb.v1.NoSuchService/ListBackends")
        self.assert_lbd_answers()

    def test_malformed_request_message_is_an_error_not_a_crash(self):
        e = self.assert_code_in((grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL),
                                "/lb.v1.Admin/ListBackends", b"\x0a\xff\x01abc")
        self.assertTrue(e.details(), "a readable grpc-message")
        self.assert_lbd_answers()

    def test_a_nul_byte_in_a_name_is_refused_not_cut(self):
        # protobuf-c hands strings over NUL-terminated: "w3\0x" was acted on as "w3"
        e = self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "/lb.v1.Admin/SetDrain",
                             set_drain_request("web", "w3\0x", True, SCOPE_LOCAL))
        self.assertIn("NUL", e.details())
        self.assertIn("id", e.details())
        e = self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, "/lb.v1.Admin/ListBackends",
                             list_backends_request("web\0"))
        self.assertIn("pool", e.details())
        self.assertFalse(self.lbd.backends("web")["w3"].get("drain"), "w3 was drained")
        self.assert_lbd_answers()

    def assert_code_in(self, codes, method, request):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(method, request)
        self.assertIn(cm.exception.code(), codes, "%s: %r" % (method, cm.exception.details()))
        return cm.exception

    def test_garbage_on_admin_port_does_not_kill_lbd(self):
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        bad_headers = b"\x00\x00\x05\x01\x05\x00\x00\x00\x01" + b"\xff\xff\xff\xff\xff"
        huge_frame = b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"A" * 1000
        payloads = [
            os.urandom(4096),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00" * 65536,
            preface + os.urandom(2048),
            preface + settings + bad_headers,
            preface + settings + huge_frame,
            preface[:10],
        ]
        port = self.lbd.admin_port
        for p in payloads:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                try:
                    s.sendall(p)
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(5)
                    while s.recv(65536):
                        pass
                except OSError:
                    pass  # a reset is a fine answer to garbage
            self.assert_lbd_answers()
        # A client that stalls half-way through the preface must not stall others.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            idle.sendall(preface[:8])
            self.assert_lbd_answers()

    def test_grpc_health_check_serving(self):
        resp = self.call("/grpc.health.v1.Health/Check", b"")
        self.assertEqual(pb_decode(resp).get(1, [0])[0], 1, "HealthCheckResponse %r" % resp)


class Codec(unittest.TestCase):
    def test_roundtrip(self):
        msg = pb_bytes(1, "web") + pb_bytes(2, "b1") + pb_uint(3, 1) + pb_uint(13, 300)
        self.assertEqual(pb_decode(msg), {1: [b"web"], 2: [b"b1"], 3: [1], 13: [300]})
        self.assertEqual(_varint(300), b"\xac\x02")
        with self.assertRaises(ValueError):
            pb_decode(b"\x0a\x05ab")


if __name__ == "__main__":
    lbtest.main()
