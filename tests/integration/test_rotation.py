#!/usr/bin/python3
"""SIGHUP rotates credentials without a restart: the admin token, the admin
TLS certificate and key, and the etcd user's password.

  1. admin token: after the file changes and SIGHUP, the old token is
     refused and the new one accepted, on a connection opened before the
     change as on a new one; an empty new file is refused with one log line
     and the token in use stays;
  2. admin TLS: after new certificate and key files and SIGHUP, a new
     handshake presents the new certificate while a gRPC channel opened
     before keeps working on its connection; a key that does not match is
     refused and the certificate in use stays;
  3. etcd user: the password changes in etcd, so lbd's writes (a cluster
     drain through lbctl) fail; after the new user file and SIGHUP they work
     again, and the watch never stopped;
  4. the config file: SIGHUP does not apply it (pools and flags are read at
     start-up), so when it changed since then lbd says what would (a restart,
     or SIGUSR2 with --upgrade-socket), and says nothing while it is as read.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest.tls import make_ca, make_server_cert  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, backend_key, figure,  # noqa: E402
                    scaled, wait_until)

PREFIX = "/rotate/"
LIST_BACKENDS = "/lb.v1.Admin/ListBackends"


def make_pki(d):
    """ca.pem; srv1 and srv2 (127.0.0.1) signed by it, with CN lbd-1 and lbd-2."""
    make_ca(d, "ca", "lbtest CA")
    for n in ("1", "2"):
        make_server_cert(d, "srv" + n, "lbd-" + n)


def write_secret(path, text):
    with open(path + ".new", "w") as f:
        f.write(text)
    os.chmod(path + ".new", 0o600)
    os.replace(path + ".new", path)


def peer_cn(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject.get("commonName")


class Rotation(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.pki = h.path("pki")
        os.mkdir(cls.pki)
        make_pki(cls.pki)
        cls.ca = os.path.join(cls.pki, "ca.pem")
        cls.cert, cls.key = h.path("admin.pem"), h.path("admin.key")
        shutil.copy(os.path.join(cls.pki, "srv1.pem"), cls.cert)
        shutil.copy(os.path.join(cls.pki, "srv1.key"), cls.key)
        cls.token_file = h.path("admin.token")
        write_secret(cls.token_file, "token-one\n")
        cls.user_file = h.path("etcd.user")
        write_secret(cls.user_file, "lb:pw-one\n")

        cls.config = h.path("lbd.json")
        with open(cls.config, "w") as f:
            json.dump({"shutdown-grace": "2s"}, f)

        cls.etcd = Etcd(h).start()
        cls.backend = Backend(h, "w1")
        cls.etcd.put(backend_key(PREFIX, "web", "w1"), json.dumps({"addr": cls.backend.addr}))
        cls.etcd.enable_auth(PREFIX, "lb", "pw-one")
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, ["web"],
                      extra_args=["--admin-token-file", cls.token_file,
                                  "--admin-tls-cert", cls.cert, "--admin-tls-key", cls.key,
                                  "--etcd-user-file", cls.user_file,
                                  "--config", cls.config])
        cls.lbd.start()
        with open(cls.ca, "rb") as f:
            cls.creds = grpc.ssl_channel_credentials(root_certificates=f.read())

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    def ctl(self, *args, token_file=None):
        env = {"LBCTL_ADMIN_TOKEN_FILE": token_file or self.token_file}
        return lbtest.lbctl("--admin-ca", self.ca, *args, admin=self.lbd.admin, env=env)

    def call(self, channel, token):
        return channel.unary_unary(LIST_BACKENDS)(
            b"", timeout=10, metadata=(("authorization", "Bearer " + token),))

    def hup(self, mark):
        """SIGHUP, then wait for the how-many-th 'SIGHUP handled' line."""
        n = self.lbd.log_text().count("SIGHUP handled")
        self.lbd.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.lbd.log_text().count("SIGHUP handled") > n, scaled(5),
                   "lbd to handle SIGHUP (%s)" % mark)

    def test_1_admin_token(self):
        held = grpc.secure_channel(self.lbd.admin, self.creds)
        self.addCleanup(held.close)
        self.call(held, "token-one")
        write_secret(self.token_file, "token-two\n")
        self.hup("new token")
        self.assertIn("admin token reloaded", self.lbd.log_text())
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(held, "token-one")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.call(held, "token-two")
        with grpc.secure_channel(self.lbd.admin, self.creds) as fresh:
            self.call(fresh, "token-two")
        rc, out, err = self.ctl("backends")
        self.assertEqual(rc, 0, err)
        # An empty file is no token: the one in use stays.
        write_secret(self.token_file, "")
        self.hup("empty token file")
        self.assertIn("cannot use the new admin token", self.lbd.log_text())
        self.call(held, "token-two")
        write_secret(self.token_file, "token-two\n")
        self.hup("token back")

    def test_2_admin_tls(self):
        port = self.lbd.admin_port
        self.assertEqual(peer_cn(port, self.ca), "lbd-1")
        held = grpc.secure_channel(self.lbd.admin, self.creds)
        self.addCleanup(held.close)
        self.call(held, "token-two" if "token-two" in open(self.token_file).read()
                  else "token-one")
        token = open(self.token_file).read().strip()
        shutil.copy(os.path.join(self.pki, "srv2.pem"), self.cert)
        shutil.copy(os.path.join(self.pki, "srv2.key"), self.key)
        self.hup("new certificate")
        self.assertEqual(peer_cn(port, self.ca), "lbd-2", "a new handshake after SIGHUP")
        self.call(held, token)  # the connection made with lbd-1 goes on
        figure("admin TLS after SIGHUP", "new handshakes lbd-2, held channel still answers")
        # A key that does not go with the certificate: refused, lbd-2 stays.
        shutil.copy(os.path.join(self.pki, "srv1.key"), self.key)
        self.hup("mismatched key")
        self.assertIn("cannot use the new admin TLS certificate and key", self.lbd.log_text())
        self.assertEqual(peer_cn(port, self.ca), "lbd-2")
        shutil.copy(os.path.join(self.pki, "srv2.key"), self.key)

    def test_3_etcd_user(self):
        self.etcd.invalidate_tokens("lb", "pw-two")  # the password changes
        rc, out, err = self.ctl("drain", "web", "w1")
        figure("cluster drain with the old etcd password", (rc, err.strip()[:100]))
        self.assertNotEqual(rc, 0, "a write to etcd with a password that changed")
        write_secret(self.user_file, "lb:pw-two\n")
        self.hup("new etcd password")
        self.assertIn("etcd credentials reloaded", self.lbd.log_text())
        rc, out, err = self.ctl("drain", "web", "w1")
        self.assertEqual(rc, 0, err)
        wait_until(lambda: self.etcd.get(lbtest.override_key(PREFIX, "web", "w1")),
                   scaled(5), "the drain override in etcd")
        rc, out, err = self.ctl("undrain", "web", "w1")
        self.assertEqual(rc, 0, err)
        # The watch never stopped: a new backend still shows up.
        b2 = Backend(self.h, "w2")
        self.etcd.put(backend_key(PREFIX, "web", "w2"), json.dumps({"addr": b2.addr}))
        wait_until(lambda: "w2" in self.ctl("backends")[1], scaled(10), "lbd to list w2")

    def test_4_config_file_changed(self):
        changed = "SIGHUP: the config file changed since start-up"
        self.hup("config file as read")
        self.assertNotIn(changed, self.lbd.log_text(), "the file is as lbd read it")
        with open(self.config) as f:
            as_read = f.read()
        with open(self.config, "w") as f:
            json.dump({"shutdown-grace": "3s"}, f)
        self.hup("config file changed")
        line = next(l for l in self.lbd.log_text().splitlines() if changed in l)
        figure("SIGHUP after the config file changed", line)
        self.assertIn("level=warn", line)
        self.assertIn("restart lbd", line)
        self.assertIn("file=" + self.config, line)
        with open(self.config, "w") as f:
            f.write(as_read)
        self.hup("config file as read again")
        self.assertEqual(self.lbd.log_text().count(changed), 1)


if __name__ == "__main__":
    lbtest.main()
