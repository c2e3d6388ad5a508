#!/usr/bin/python3
"""`lbctl register` when etcd or the lease misbehaves while the backend lives.

  - the lease expires (the registrar was frozen past its TTL): it registers
    again, with a new lease, within one TTL of running again;
  - the key is deleted, or overwritten, while the lease lives: put back;
  - etcd restarts after an outage longer than the TTL: the lease is kept
    and the outage is logged once, then once more when it ends;
  - etcd comes back with no data at all: a new lease and the key again,
    and lbd (which sees a new cluster) re-lists and serves the backend;
  - SIGTERM revokes at once (exit 0); with etcd gone it cannot, and says so
    (exit 1); bad flags exit 2.
"""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd, Registrar,  # noqa: E402
                    ask_many, lbd_pool, scaled, wait_until)

PREFIX = "/lbtest-reg/"
POOL = "web"
TTL_S = 2.0


class RegisterFaults(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)
        self.etcd = Etcd(self.h).start()
        self.b1 = Backend(self.h, "b1")

    def registrar(self):
        return Registrar(self.h, self.etcd, PREFIX, POOL, "b1", self.b1.addr,
                         ttl="%ds" % TTL_S).wait_registered()

    def lease_of(self, reg):
        kv = self.etcd.get_kv(reg.key)
        return kv and kv["lease"]

    def test_lease_expires_while_the_backend_lives(self):
        reg = self.registrar()
        lease = self.lease_of(reg)
        reg.proc.send_signal(signal.SIGSTOP)  # frozen: no keepalives
        try:
            wait_until(lambda: self.etcd.get(reg.key) is None, scaled(10),
                       "the lease to expire and take the key with it")
        finally:
            reg.proc.send_signal(signal.SIGCONT)
        t_cont = time.monotonic()
        new_lease = wait_until(lambda: self.lease_of(reg), TTL_S,
                               "the key back within one TTL of the registrar running again")
        sys.stderr.write("\nkey back %.2fs after SIGCONT\n" % (time.monotonic() - t_cont))
        self.assertNotEqual(new_lease, lease)
        self.assertIn("lease lost (it expired while etcd was out of reach, or etcd lost its data)",
                      reg.proc.log_text())
        self.assertEqual(reg.stop(), 0)

    def test_key_deleted_or_overwritten_while_the_lease_lives(self):
        reg = self.registrar()
        lease = self.lease_of(reg)
        self.etcd.delete(reg.key)
        t_del = time.monotonic()
        wait_until(lambda: self.lease_of(reg) == lease, TTL_S,
                   "the deleted key back, under the same lease, within one TTL")
        sys.stderr.write("\ndeleted key back after %.2fs\n" % (time.monotonic() - t_del))
        self.assertIn("backend key deleted while its lease lives, putting it back",
                      reg.proc.log_text())
        # someone writes over it without a lease: ours comes back
        self.etcd.put(reg.key, '{"addr":"10.9.9.9:1"}')
        wait_until(lambda: self.lease_of(reg) == lease and "10.9.9.9" not in self.etcd.get(reg.key),
                   TTL_S, "our value and lease back within one TTL")
        self.assertIn("backend key was overwritten, putting ours back", reg.proc.log_text())
        self.assertEqual(reg.stop(), 0)
        wait_until(lambda: self.etcd.get(reg.key) is None, scaled(5), "SIGTERM to revoke")

    def test_etcd_restarts_after_an_outage_longer_than_the_ttl(self):
        reg = self.registrar()
        lease = self.lease_of(reg)
        self.etcd.kill()
        t_kill = time.monotonic()
        wait_until(lambda: 'msg="etcd lease keepalive failed, retrying"' in reg.proc.log_text(),
                   scaled(10), "the registrar to log the first failure")
        # down for longer than the TTL, watched through the registrar's log
        wait_until(lambda: time.monotonic() - t_kill > TTL_S * 1.5 and reg.proc.alive(),
                   scaled(10), "an outage longer than the TTL")
        self.etcd.restart()
        t_back = time.monotonic()
        wait_until(lambda: self.etcd.get(reg.key) is not None, TTL_S,
                   "the key in etcd within one TTL of etcd's return")
        wait_until(lambda: "etcd reachable again after" in reg.proc.log_text(), scaled(5),
                   "the registrar to say etcd is back")
        sys.stderr.write("\nkey present %.2fs after etcd's return\n" % (time.monotonic() - t_back))
        log = reg.proc.log_text()
        warns = [ln for ln in log.splitlines() if "level=warn" in ln]
        self.assertEqual(len(warns), 1, "one warning for the whole outage:\n" + "\n".join(warns))
        self.assertIn("lease_left=", warns[0])
        self.assertRegex(log, r'msg="etcd reachable again after [0-9.]+s, lease kept"')
        # etcd extends leases when it starts again: the same lease lives on
        self.assertEqual(self.lease_of(reg), lease)
        self.assertEqual(reg.stop(), 0)

    def test_etcd_loses_its_data(self):
        reg = self.registrar()
        lease = self.lease_of(reg)
        lbd = Lbd(self.h, self.etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "1s", "--etcd-backoff-max", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: set(ask_many(lbd.pool_port(POOL), 5)) == {"b1"}, scaled(10),
                   "b1 answering through lbd")
        self.etcd.wipe()
        self.etcd.restart()  # a new, empty cluster on the same port
        t_back = time.monotonic()
        new_lease = wait_until(lambda: self.lease_of(reg), TTL_S,
                               "the key registered again within one TTL of etcd's return")
        sys.stderr.write("\nre-registered %.2fs after etcd came back empty\n"
                         % (time.monotonic() - t_back))
        self.assertNotEqual(new_lease, lease)
        wait_until(lambda: "b1" in lbd_pool(lbd, POOL) and
                   lbd.metric("lbd_etcd_relists_total") >= 1, scaled(10),
                   "lbd to re-list the new cluster and keep b1")
        self.assertEqual(set(ask_many(lbd.pool_port(POOL), 5)), {"b1"})
        self.assertEqual(reg.stop(), 0)

    def test_exit_codes(self):
        reg = self.registrar()
        self.assertEqual(reg.stop(), 0)  # revoked
        self.assertIsNone(self.etcd.get(reg.key))
        self.assertIn('msg="deregistered"', reg.proc.log_text())

        reg = self.registrar()
        self.etcd.kill()
        rc = reg.stop(timeout=scaled(20))
        self.assertEqual(rc, 1, "no etcd to revoke at: exit 1")
        err_lines = [ln for ln in reg.proc.log_text().splitlines()
                     if ln.startswith("lbctl register: could not revoke lease")]
        self.assertEqual(len(err_lines), 1, reg.proc.log_text())
        self.assertIn("expires within its TTL", err_lines[0])

        rc, out, err = lbtest.run([lbtest.lbctl_binary(), "register", "--pool", "web", "--id",
                                   "b1", "--addr", "nope"], timeout=scaled(10))
        self.assertEqual(rc, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(re.match(r"lbctl register: --addr \"nope\"", err), err)


if __name__ == "__main__":
    lbtest.main()
