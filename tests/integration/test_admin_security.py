#!/usr/bin/python3
"""lbd's admin API with a bearer token and over TLS: real etcd, real lbd, lbctl
and an independent gRPC client (python3-grpcio).

Two lbds watch the same etcd prefix: one wants a token on a cleartext admin
port (set with flags), the other wants the same token over TLS (set with
LBD_* environment variables).  The certificates are made for the test with
the openssl command line: a CA, a server certificate for 127.0.0.1 and
localhost, and an unrelated CA.
"""

import json
import os
import secrets
import socket
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest.tls import make_ca, make_server_cert  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, backend_key, free_port,  # noqa: E402
                    lbctl, lbd_binary, run, scaled, wait_until)

PREFIX = "/lbtest-adminsec/"
LIST_BACKENDS = "/lb.v1.Admin/ListBackends"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNAUTH_DETAILS = "missing or invalid admin token"


def make_pki(d):
    """ca.pem, srv.pem + srv.key (127.0.0.1, localhost) signed by it, other-ca.pem."""
    make_ca(d, "ca", "lbtest CA")
    make_server_cert(d, "srv", "lbd")
    make_ca(d, "other-ca", "some other CA")


def bearer(token):
    return (("authorization", "Bearer " + token),)


def list_backends_ids(channel, token=None):
    resp = channel.unary_unary(LIST_BACKENDS)(b"", timeout=10,
                                              metadata=bearer(token) if token else None)
    # ListBackendsResponse { repeated Backend backends = 1; } and Backend.id = 2: find the ids
    ids, i = set(), 0
    while i < len(resp):
        assert resp[i] == 0x0A, resp
        n, i = _varint(resp, i + 1)
        ids.add(_backend_id(resp[i:i + n]))
        i += n
    return ids


def _varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def _backend_id(buf):
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        if tag & 7 == 0:
            _, i = _varint(buf, i)
            continue
        n, i = _varint(buf, i)
        if tag >> 3 == 2:
            return buf[i:i + n].decode()
        i += n
    return None


class AdminSecurity(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.pki = h.path("pki")
        os.mkdir(cls.pki)
        make_pki(cls.pki)
        cls.ca = os.path.join(cls.pki, "ca.pem")
        cls.other_ca = os.path.join(cls.pki, "other-ca.pem")
        cls.token = "lbtest-" + secrets.token_urlsafe(24)
        cls.token_file = h.path("admin.token")
        with open(cls.token_file, "w") as f:
            f.write("  %s  \n" % cls.token)  # lbd and lbctl trim the first line
        cls.wrong_file = h.path("wrong.token")
        with open(cls.wrong_file, "w") as f:
            f.write("not-the-token\n")
        for path in (cls.token_file, cls.wrong_file):
            os.chmod(path, 0o600)  # as an operator keeps it: no "readable by everyone" warning

        cls.etcd = Etcd(h).start()
        cls.backend = Backend(h, "w1")
        cls.etcd.put(backend_key(PREFIX, "web", "w1"), json.dumps({"addr": cls.backend.addr}))
        cls.plain = Lbd(h, cls.etcd.url, PREFIX, ["web"], name="lbd-token",
                        extra_args=["--admin-token-file", cls.token_file,
                                    "--shutdown-grace", "2s"]).start()
        cls.tls = Lbd(h, cls.etcd.url, PREFIX, ["web"], name="lbd-tls",
                      extra_args=["--shutdown-grace", "2s"],
                      env={"LBD_ADMIN_TOKEN_FILE": cls.token_file,
                           "LBD_ADMIN_TLS_CERT": os.path.join(cls.pki, "srv.pem"),
                           "LBD_ADMIN_TLS_KEY": os.path.join(cls.pki, "srv.key")}).start()
        for lbd, extra in ((cls.plain, []), (cls.tls, ["--admin-ca", cls.ca])):
            wait_until(lambda: "w1" in cls.ctl_ok(lbd, *extra, "-o", "json", "backends"),
                       scaled(10), "%s to list w1" % lbd.name)
        with open(cls.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        cls.plain_channel = grpc.insecure_channel(cls.plain.admin)
        cls.tls_channel = grpc.secure_channel(cls.tls.admin, creds)

    @classmethod
    def tearDownWorld(cls):
        cls.plain_channel.close()
        cls.tls_channel.close()
        cls.plain.stop(expect_rc=0)
        cls.tls.stop(expect_rc=0)

    @classmethod
    def ctl(cls, lbd, *args, env=None, token=True):
        """lbctl against `lbd`, with --admin-token-file unless token is False."""
        argv = (["--admin-token-file", cls.token_file] if token else []) + list(args)
        return lbctl(*argv, admin=lbd.admin, env=env)

    @classmethod
    def ctl_ok(cls, lbd, *args, env=None):
        rc, out, err = cls.ctl(lbd, *args, env=env)
        if rc != 0:
            raise AssertionError("lbctl %s: rc=%d %s" % (" ".join(args), rc, err.strip()))
        return out

    def assert_one_line_error(self, rc, out, err, *needles):
        self.assertEqual(rc, 1, "exit code (stderr %r)" % err)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, "one line: %r" % err)
        for n in needles:
            self.assertIn(n, err)

    def assert_unauthenticated(self, channel, method, metadata=None):
        with self.assertRaises(grpc.RpcError) as cm:
            channel.unary_unary(method)(b"", timeout=10, metadata=metadata)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(cm.exception.details(), UNAUTH_DETAILS)

    def assert_serving(self, lbd, channel):
        self.assertTrue(lbd.proc.alive(), "%s died:\n%s" % (lbd.name, lbd.proc.log_tail(40)))
        self.assertEqual(list_backends_ids(channel, self.token), {"w1"})

    # ------------------------------------------------------------- token

    def test_lbctl_without_token_is_told_to_pass_one(self):
        for lbd, extra in ((self.plain, []), (self.tls, ["--admin-ca", self.ca])):
            rc, out, err = self.ctl(lbd, *extra, "backends", token=False)
            self.assert_one_line_error(rc, out, err, "requires an admin token",
                                       "--admin-token-file")

    def test_lbctl_wrong_token_is_refused(self):
        rc, out, err = lbctl("--admin-token-file", self.wrong_file, "backends",
                             admin=self.plain.admin)
        self.assert_one_line_error(rc, out, err, "refused the admin token", self.wrong_file,
                                   "--admin-token-file")
        rc, out, err = lbctl("--admin-token-file", self.h.path("missing.token"), "pools",
                             admin=self.plain.admin)
        self.assert_one_line_error(rc, out, err, "admin token file", "cannot read")

    def test_lbctl_token_from_flag_or_environment(self):
        self.assertIn("w1", self.ctl_ok(self.plain, "backends"))
        rc, out, err = lbctl("backends", admin=self.plain.admin,
                             env={"LBCTL_ADMIN_TOKEN_FILE": self.token_file})
        self.assertEqual(rc, 0, err)
        self.assertIn("w1", out)
        # mutations too
        drained = json.loads(self.ctl_ok(self.plain, "-o", "json", "drain", "web", "w1", "--local"))
        self.assertIs(drained["drain"], True)
        self.ctl_ok(self.plain, "undrain", "web", "w1", "--local")
        rc, _, err = self.ctl(self.plain, "drain", "web", "w1", "--local", token=False)
        self.assertEqual(rc, 1, err)
        self.assertFalse(json.loads(self.ctl_ok(self.plain, "-o", "json", "backends"))
                         ["backends"][0]["drain"])

    def test_grpcio_token_missing_wrong_and_right(self):
        self.assert_unauthenticated(self.plain_channel, LIST_BACKENDS)
        self.assert_unauthenticated(self.plain_channel, LIST_BACKENDS, bearer("not-the-token"))
        self.assert_unauthenticated(self.plain_channel, LIST_BACKENDS, (("authorization",
                                                                         self.token),))
        # an unknown method tells nothing without the token
        self.assert_unauthenticated(self.plain_channel, "/lb.v1.Admin/NoSuchMethod")
        with self.assertRaises(grpc.RpcError) as cm:
            self.plain_channel.unary_unary("/lb.v1.Admin/NoSuchMethod")(
                b"", timeout=10, metadata=bearer(self.token))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(list_backends_ids(self.plain_channel, self.token), {"w1"})

    def test_health_check_needs_no_token(self):
        for channel in (self.plain_channel, self.tls_channel):
            resp = channel.unary_unary(HEALTH_CHECK)(b"", timeout=10)
            self.assertEqual(resp, b"\x08\x01", "SERVING")  # HealthCheckResponse{status: 1}

    def test_token_never_logged_or_printed(self):
        rc, out, err = self.ctl(self.plain, "backends")
        self.assertEqual(rc, 0, err)
        rc2, out2, err2 = lbctl("--admin-token-file", self.wrong_file, "pools",
                                admin=self.plain.admin)
        for text in (out, err, out2, err2, self.plain.log_text(), self.tls.log_text()):
            self.assertNotIn(self.token, text)
            self.assertNotIn("not-the-token", text)
        self.assertIn("admin call refused: missing or invalid admin token", self.plain.log_text())

    # --------------------------------------------------------------- TLS

    def test_tls_grpcio_secure_channel(self):
        self.assertEqual(list_backends_ids(self.tls_channel, self.token), {"w1"})
        self.assert_unauthenticated(self.tls_channel, LIST_BACKENDS)
        # the certificate names localhost as well as 127.0.0.1
        with open(self.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel("localhost:%d" % self.tls.admin_port, creds) as ch:
            self.assertEqual(list_backends_ids(ch, self.token), {"w1"})

    def test_tls_lbctl_with_admin_ca(self):
        out = self.ctl_ok(self.tls, "--admin-ca", self.ca, "-o", "json", "backends", "web")
        self.assertEqual([b["id"] for b in json.loads(out)["backends"]], ["w1"])
        rc, out, err = lbctl("pools", admin=self.tls.admin,
                             env={"LBCTL_ADMIN_CA": self.ca,
                                  "LBCTL_ADMIN_TOKEN_FILE": self.token_file})
        self.assertEqual(rc, 0, err)
        self.assertIn("web", out)
        drained = json.loads(self.ctl_ok(self.tls, "--admin-ca", self.ca, "-o", "json",
                                         "drain", "web", "w1", "--local"))
        self.assertIs(drained["drain"], True)
        self.ctl_ok(self.tls, "--admin-ca", self.ca, "undrain", "web", "w1", "--local")

    def test_tls_lbctl_without_ca_or_with_the_wrong_one(self):
        rc, out, err = self.ctl(self.tls, "backends")
        self.assert_one_line_error(rc, out, err, "--admin-ca")
        rc, out, err = self.ctl(self.tls, "--admin-ca", self.other_ca, "backends")
        self.assert_one_line_error(rc, out, err, "TLS certificate", "was not accepted")
        rc, out, err = self.ctl(self.plain, "--admin-ca", self.ca, "backends")
        self.assert_one_line_error(rc, out, err, "TLS handshake", "drop --admin-ca")
        rc, out, err = self.ctl(self.tls, "--admin-ca", self.h.path("missing.pem"), "backends")
        self.assert_one_line_error(rc, out, err, "--admin-ca", "cannot read")
        self.assert_serving(self.tls, self.tls_channel)

    def test_tls_port_closes_cleartext_and_garbage(self):
        with grpc.insecure_channel(self.tls.admin) as ch:
            with self.assertRaises(grpc.RpcError) as cm:
                ch.unary_unary(HEALTH_CHECK)(b"", timeout=5)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assert_serving(self.tls, self.tls_channel)
        before = self.tls.log_text().count("not a TLS client")
        payloads = [b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(2048).lstrip(b"\x16"),
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
        for p in payloads:
            with socket.create_connection(("127.0.0.1", self.tls.admin_port), timeout=5) as s:
                try:
                    s.sendall(p)
                    s.settimeout(5)
                    while s.recv(65536):
                        pass
                except OSError:
                    pass  # a reset is a fine answer
        # one log line per connection, and lbd keeps serving
        count = lambda: self.tls.log_text().count("not a TLS client")  # noqa: E731
        wait_until(lambda: count() >= before + len(payloads), scaled(5),
                   "a log line per cleartext connection")
        self.assertEqual(count(), before + len(payloads))
        self.assertIn("cleartext HTTP/1 request on the TLS admin port", self.tls.log_text())
        # a client that stalls in the handshake does not hold up others
        with socket.create_connection(("127.0.0.1", self.tls.admin_port), timeout=5) as idle:
            idle.sendall(b"\x16\x03\x01\x02\x00")
            self.assert_serving(self.tls, self.tls_channel)
        self.assert_serving(self.tls, self.tls_channel)


class BadSettings(unittest.TestCase):
    """lbd refuses to start, in one line, when the admin token or TLS files are unusable."""

    @classmethod
    def setUpClass(cls):
        cls.h = lbtest.Harness("adminsec-bad")
        cls.d = cls.h.dir
        make_pki(cls.d)
        with open(os.path.join(cls.d, "empty.token"), "w"):
            pass

    @classmethod
    def tearDownClass(cls):
        cls.h.cleanup()

    def lbd_fails(self, *args):
        argv = [lbd_binary(), "--etcd", "http://127.0.0.1:%d" % free_port(),
                "--pool", "web=127.0.0.1:%d" % free_port(),
                "--admin", "127.0.0.1:%d" % free_port(), "--http", "127.0.0.1:%d" % free_port()]
        rc, out, err = run(argv + list(args), timeout=scaled(20))
        self.assertNotEqual(rc, 0, "lbd started with %s" % (args,))
        lines = [ln for ln in err.splitlines() if ln.startswith("lbd: ")]
        self.assertEqual(len(lines), 1, err)
        return lines[0]

    def p(self, name):
        return os.path.join(self.d, name)

    def test_unusable_token_file(self):
        self.assertIn("cannot read", self.lbd_fails("--admin-token-file", self.p("nope.token")))
        self.assertIn("is empty", self.lbd_fails("--admin-token-file", self.p("empty.token")))

    def test_unusable_tls_files(self):
        self.assertIn("go together", self.lbd_fails("--admin-tls-cert", self.p("srv.pem")))
        self.assertIn("cannot read", self.lbd_fails("--admin-tls-cert", self.p("nope.pem"),
                                                    "--admin-tls-key", self.p("srv.key")))
        self.assertIn("does not belong", self.lbd_fails("--admin-tls-cert", self.p("srv.pem"),
                                                        "--admin-tls-key", self.p("ca.key")))


if __name__ == "__main__":
    lbtest.main()
