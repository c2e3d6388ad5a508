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

And what it writes (RegisterValue):

  - --zone and --meta (or LBCTL_ZONE, LBCTL_META) land in the value as
    "zone" and "meta"; the "registered" line names the zone;
  - a zone lbd would skip the value for, or --meta that is not KEY=VALUE,
    is refused with one line and exit 2, before anything reaches etcd;
  - lbd --zone a with zone_affinity sends every new connection to the
    backend registered with --zone a, none to the one with --zone b.
"""

import json
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


class RegisterValue(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)
        self.etcd = Etcd(self.h).start()

    def refused(self, *flags, env=None):
        """Runs lbctl register with flags that must be refused: the one error line."""
        rc, out, err = lbtest.run([lbtest.lbctl_binary(), "register", "--etcd", self.etcd.url,
                                   "--prefix", PREFIX, "--pool", POOL, "--id", "b1", "--addr",
                                   "127.0.0.1:1", "--ttl", "2s"] + list(flags),
                                  timeout=scaled(10), env=env)
        self.assertEqual(rc, 2, "%r: %s%s" % (flags, out, err))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertEqual(out, "")
        return err.strip()

    def test_zone_and_meta_are_written_into_the_value(self):
        b1 = Backend(self.h, "b1")
        reg = Registrar(self.h, self.etcd, PREFIX, POOL, "b1", b1.addr, weight=50,
                        extra_args=["--zone", "us-east-1a", "--meta", "team=web",
                                    "--meta", "build=1.2=rc", "--meta", "note="]).wait_registered()
        self.assertEqual(json.loads(self.etcd.get(reg.key)),
                         {"addr": b1.addr, "weight": 50, "zone": "us-east-1a",
                          "meta": {"team": "web", "build": "1.2=rc", "note": ""}})
        self.assertRegex(reg.proc.log_text(),
                         r'msg="registered" pool=web id=b1 addr=\S+ zone=us-east-1a key=')
        self.assertEqual(reg.stop(), 0)

        # the environment, as the Helm sidecar or a systemd unit would set it
        reg = Registrar(self.h, self.etcd, PREFIX, POOL, "b2", b1.addr,
                        env={"LBCTL_ZONE": "b:2._x", "LBCTL_META": "a=1,b=2"}).wait_registered()
        self.assertEqual(json.loads(self.etcd.get(reg.key)),
                         {"addr": b1.addr, "weight": 100, "zone": "b:2._x",
                          "meta": {"a": "1", "b": "2"}})
        self.assertEqual(reg.stop(), 0)

        # no zone (and an empty one, as Helm's default passes it): no "zone" at all
        reg = Registrar(self.h, self.etcd, PREFIX, POOL, "b3", b1.addr,
                        extra_args=["--zone", ""]).wait_registered()
        self.assertEqual(json.loads(self.etcd.get(reg.key)), {"addr": b1.addr, "weight": 100})
        self.assertNotIn("zone=", reg.proc.log_text())
        self.assertEqual(reg.stop(), 0)

    def test_bad_zone_or_meta_is_refused(self):
        # lbd's reader takes a zone of up to 63 characters of [A-Za-z0-9._:-]
        for zone in ("a b", "eu/west", "zone\u00e9", "a,b", "x" * 64):
            with self.subTest(zone=zone):
                err = self.refused("--zone", zone)
                self.assertTrue(err.startswith("lbctl register: --zone"), err)
                self.assertTrue("zone must be made of [A-Za-z0-9._:-]" in err or
                                "longer than 63 characters" in err, err)
        err = self.refused(env={"LBCTL_ZONE": "a b"})
        self.assertIn("zone must be made of [A-Za-z0-9._:-]", err)
        self.assertIn("lbctl register: --meta \"team\": want KEY=VALUE", self.refused("--meta", "team"))
        self.assertIn("lbctl register: --meta \"=web\": want KEY=VALUE", self.refused("--meta", "=web"))
        self.assertIn('key "a" given twice', self.refused("--meta", "a=1", "--meta", "a=2"))
        # lbd skips a value over 64 KiB: so does lbctl, before writing it
        big = ["--meta=k%d=%s" % (i, "v" * 4000) for i in range(17)]
        self.assertIn("--meta: backend value is larger than 65536 bytes", self.refused(*big))
        self.assertFalse(self.etcd.get_prefix(PREFIX), "nothing reaches etcd")
        # the longest zone lbd takes is taken
        b1 = Backend(self.h, "b1")
        reg = Registrar(self.h, self.etcd, PREFIX, POOL, "b1", b1.addr,
                        extra_args=["--zone", "z" * 63]).wait_registered()
        self.assertEqual(json.loads(self.etcd.get(reg.key))["zone"], "z" * 63)
        self.assertEqual(reg.stop(), 0)

    def test_zone_affinity_routes_to_the_backend_registered_in_the_zone(self):
        self.etcd.put("%spools/%s/config" % (PREFIX, POOL), json.dumps(
            {"health": {"type": "tcp", "interval": "200ms", "timeout": "200ms", "rise": 1},
             "zone_affinity": 50, "panic_threshold": 0}))
        regs = {}
        for bid, zone in (("a1", "a"), ("b1", "b")):
            b = Backend(self.h, bid)
            regs[bid] = Registrar(self.h, self.etcd, PREFIX, POOL, bid, b.addr,
                                  extra_args=["--zone", zone])
        for reg in regs.values():
            reg.wait_registered()
        lbd = Lbd(self.h, self.etcd.url, PREFIX, [POOL], extra_args=["--zone", "a"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: lbd.metric("lbd_pool_healthy_backends", pool=POOL) == 2, scaled(5),
                   "a1 and b1 healthy")
        self.assertEqual({i: b["zone"] for i, b in lbd.backends(POOL).items()},
                         {"a1": "a", "b1": "b"})
        wait_until(lambda: lbd.metric("lbd_pool_zone_local", pool=POOL) == 1, scaled(5),
                   "zone a local")
        self.assertEqual(dict(ask_many(lbd.pool_port(POOL), 20)), {"a1": 20})
        for reg in regs.values():
            self.assertEqual(reg.stop(), 0)


if __name__ == "__main__":
    lbtest.main()
