#!/usr/bin/python3
"""lbd and `lbctl register` against a secured etcd.

  - TLS only, client certificates required (--client-cert-auth), with a
    CA, server and client certificates made here with openssl: lbd and
    the registrar work; an lbd without a client certificate says so in one
    line and keeps retrying;
  - etcd users with a 3-second token TTL and a role limited to the prefix:
    lbd and the registrar log in and keep working after their tokens
    expire (a put made after expiry reaches lbd, a cluster-scope drain
    written with an expired token succeeds, the registrar's lease lives)
    and after etcd restarts; wrong credentials give one clear line; no
    password ever shows in a log or a command line.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd, Registrar,  # noqa: E402
                    TlsFiles, ask_many, backend_key, backend_value, lbd_pool, override_key,
                    scaled, wait_until)

PREFIX = "/lbtest-sec/"
POOL = "web"
PASSWORD = "app-Secret-9f2c"
TOKEN_TTL_S = 3


def write_secret(h, name, text):
    path = h.path(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class Secured(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def answering(self, lbd, ids, n=20):
        counts = ask_many(lbd.pool_port(POOL), n)
        return set(counts) == set(ids) and counts

    def test_tls_with_client_certificates(self):
        tls = TlsFiles(self.h)
        etcd = Etcd(self.h, tls=tls).start()
        b1 = Backend(self.h, "b1")
        # the registrar takes the CA from its environment, the rest as flags
        reg = Registrar(self.h, etcd, PREFIX, POOL, "b1", b1.addr, ttl="3s",
                        extra_args=["--etcd-cert", tls.client_cert, "--etcd-key", tls.client_key],
                        env={"LBCTL_ETCD_CA": tls.ca}).wait_registered()
        # lbd takes the client certificate and key from its environment
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL], extra_args=["--etcd-ca", tls.ca],
                  env={"LBD_ETCD_CERT": tls.client_cert, "LBD_ETCD_KEY": tls.client_key}).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: self.answering(lbd, {"b1"}), scaled(10), "b1 answering over TLS etcd")
        etcd.put(backend_key(PREFIX, POOL, "b2"), backend_value("127.0.0.1:9"))
        wait_until(lambda: "b2" in lbd_pool(lbd, POOL), scaled(5), "a put to reach lbd")

        # Without a client certificate: one clear line, and retries.
        bare = Lbd(self.h, etcd.url, PREFIX, [POOL], extra_args=["--etcd-ca", tls.ca,
                                                                 "--etcd-backoff-max", "500ms"],
                   name="lbd-nocert").start(wait_ready=False)
        self.addCleanup(bare.stop, 0)
        line = wait_until(lambda: [ln for ln in bare.log_text().splitlines()
                                   if "level=warn" in ln and "sub=watcher" in ln], scaled(10),
                          "lbd without a client certificate to say why it cannot list")[0]
        self.assertIn("client certificate", line)
        self.assertIn("--etcd-cert", line)
        wait_until(lambda: bare.metric("lbd_etcd_reconnects_total") >= 4, scaled(10),
                   "lbd to keep retrying")
        self.assertEqual(bare.http_get("/readyz")[0], 503)
        warns = [ln for ln in bare.log_text().splitlines() if "level=warn" in ln]
        self.assertEqual(len(warns), 1, "the same failure again and again is one line:\n%s"
                         % "\n".join(warns))

        # A CA that did not sign etcd's certificate: named as such.
        stranger = Lbd(self.h, etcd.url, PREFIX, [POOL],
                       extra_args=["--etcd-ca", tls.other_cert, "--etcd-cert", tls.client_cert,
                                   "--etcd-key", tls.client_key],
                       name="lbd-wrongca").start(wait_ready=False)
        self.addCleanup(stranger.stop, 0)
        wait_until(lambda: "is not trusted (check --etcd-ca" in stranger.log_text(), scaled(10),
                   "lbd with the wrong CA to say so")

        self.assertEqual(reg.stop(), 0)
        wait_until(lambda: etcd.get(reg.key) is None, scaled(5), "SIGTERM to revoke the lease")
        wait_until(lambda: "b1" not in lbd_pool(lbd, POOL), scaled(5), "b1 to leave lbd's pool")

    def test_users_with_expiring_tokens(self):
        etcd = Etcd(self.h, extra_args=["--auth-token-ttl", str(TOKEN_TTL_S)]).start()
        etcd.enable_auth(PREFIX, "app", PASSWORD)
        creds = write_secret(self.h, "app.cred", "app:%s\n" % PASSWORD)
        b1, b2, b3 = (Backend(self.h, i) for i in ("b1", "b2", "b3"))
        # keepalive rounds every 4 s: each finds its token expired (TTL 3 s)
        reg = Registrar(self.h, etcd, PREFIX, POOL, "b1", b1.addr, ttl="12s",
                        env={"LBCTL_ETCD_USER_FILE": creds}).wait_registered()
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL],
                  extra_args=["--etcd-user-file", creds, "--etcd-backoff-max", "1s",
                              "--shutdown-grace", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: self.answering(lbd, {"b1"}), scaled(10), "b1 answering")
        self.assertEqual(lbd.metric("lbd_etcd_logins_total"), 1)

        # Tokens expire: the registrar logs in again on its next rounds (each
        # 4 s apart, the TTL is 3 s) and its lease lives.  lbd has not used
        # its token since it made its watch: expired too.  A put made now
        # still reaches lbd.
        wait_until(lambda: reg.proc.log_text().count("logged in to etcd again") >= 2, scaled(15),
                   "the registrar to log in again after its token expired")
        ttl, keys = etcd.lease_ttl(etcd.get_kv(reg.key)["lease"])
        self.assertGreater(ttl, 0)
        self.assertEqual(keys, [reg.key])
        etcd.put(backend_key(PREFIX, POOL, "b2"), backend_value(b2.addr))
        wait_until(lambda: self.answering(lbd, {"b1", "b2"}), scaled(5),
                   "b2, put after lbd's token expired, answering")

        # A cluster-scope drain goes to etcd with lbd's expired token: etcd
        # refuses it, lbd logs in again and sends it once more.
        rc, out, err = lbd.ctl("drain", POOL, "b2")
        self.assertEqual(rc, 0, err)
        self.assertIsNotNone(etcd.get(override_key(PREFIX, POOL, "b2")))
        wait_until(lambda: lbd.backends(POOL)["b2"]["drain"], scaled(5), "b2 drained")
        self.assertEqual(lbd.metric("lbd_etcd_logins_total"), 2)

        # etcd drops every token of the user, then restarts: lbd's watch is
        # made again with a token etcd no longer knows, etcd cancels it, lbd
        # logs in again and watches on.  The registrar carries on.
        etcd.invalidate_tokens("app", PASSWORD)
        etcd.kill()
        etcd.restart()
        wait_until(lambda: "etcd refused the watch's token, logging in again" in lbd.log_text(),
                   scaled(10), "lbd's watch to be refused for its token")
        wait_until(lambda: lbd.watch_state() == "watching", scaled(10), "lbd watching again")
        self.assertEqual(lbd.metric("lbd_etcd_logins_total"), 3)
        etcd.put(backend_key(PREFIX, POOL, "b3"), backend_value(b3.addr))
        wait_until(lambda: "b3" in lbd_pool(lbd, POOL), scaled(5),
                   "b3, put after lbd logged in again, to reach lbd")
        logins = reg.proc.log_text().count("logged in to etcd")
        wait_until(lambda: reg.proc.log_text().count("logged in to etcd") > logins, scaled(15),
                   "the registrar to log in again after etcd restarted")
        ttl, keys = etcd.lease_ttl(etcd.get_kv(reg.key)["lease"])
        self.assertGreater(ttl, 0)
        self.assertEqual(keys, [reg.key])
        self.assertEqual(reg.proc.log_text().count('msg="registered"'), 1)

        # Wrong password: one clear line, and lbd keeps trying.
        bad = write_secret(self.h, "bad.cred", "app:not-the-password\n")
        wrong = Lbd(self.h, etcd.url, PREFIX, [POOL], extra_args=["--etcd-user-file", bad],
                    name="lbd-badpw").start(wait_ready=False)
        self.addCleanup(wrong.stop, 0)
        wait_until(lambda: "etcd rejected the credentials for user app" in wrong.log_text(),
                   scaled(10), "lbd with a wrong password to say so")
        wait_until(lambda: wrong.metric("lbd_etcd_login_failures_total") >= 2, scaled(10),
                   "lbd to keep trying")
        # A missing file: lbd refuses to start, in one line.
        rc, out, err = lbtest.run([lbtest.lbd_binary(), "--etcd", etcd.url, "--pool",
                                   "web=127.0.0.1:%d" % lbtest.free_port(), "--etcd-user-file",
                                   self.h.path("nope.cred")], timeout=scaled(10))
        self.assertNotEqual(rc, 0)
        self.assertIn("cannot read --etcd-user-file %s" % self.h.path("nope.cred"), err)

        # Passwords stay out of every log and every command line.
        for p in self.h.procs:
            self.assertNotIn(PASSWORD, p.log_text(), p.name)
            self.assertNotIn("not-the-password", p.log_text(), p.name)
        for p in (lbd.proc, reg.proc, wrong.proc):
            with open("/proc/%d/cmdline" % p.pid, "rb") as f:
                self.assertNotIn(PASSWORD.encode(), f.read())

        self.assertEqual(reg.stop(), 0)
        self.assertIn("deregistered", reg.proc.log_text())
        wait_until(lambda: "b1" not in lbd_pool(lbd, POOL), scaled(5), "b1 to leave the pool")


if __name__ == "__main__":
    lbtest.main()
