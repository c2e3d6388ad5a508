#!/usr/bin/python3
"""End to end: backends that come and go, one pool, one lbd, a real etcd.

One story, told in order (the steps share the world and are numbered):
  1. three backends register with `lbctl register`; 300 new connections
     split 100 each (+-10);
  2. SIGTERM to one registrar: within 1 s that backend gets no new
     connection;
  3. `lbctl drain` another: no new connections to it, while a connection
     opened before the drain still echoes; it becomes `drained` once that
     connection closes;
  4. `etcdctl put` of a new backend key: it starts receiving connections;
  5. malformed values under the prefix: lbd logs a line naming the key and
     keeps serving;
  6. `lbctl backends` (table and -o json) shows what the story left.
"""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, Registrar, ask, ask_many,  # noqa: E402
                    backend_key, echo, open_conn, scaled, wait_until)

PREFIX = "/lbtest/"
POOL = "web"


class EndToEnd(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        # Default pool policy, active TCP checks included: the backends count
        # only connections that say HELLO (lbtest.ask), never health checks.
        cls.backends = {i: Backend(h, i) for i in ("b1", "b2", "b3")}
        cls.registrars = {}
        # Two register before lbd starts (found by the first range read),
        # one after (found by the watch).
        for i in ("b1", "b2"):
            cls.registrars[i] = Registrar(h, cls.etcd, PREFIX, POOL, i, cls.backends[i].addr,
                                          ttl="2s").wait_registered()
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, [POOL], extra_args=["--shutdown-grace", "2s"]).start()
        cls.registrars["b3"] = Registrar(h, cls.etcd, PREFIX, POOL, "b3", cls.backends["b3"].addr,
                                         ttl="2s").wait_registered()
        cls.port = cls.lbd.pool_port(POOL)
        cls.extra = {}

    @classmethod
    def tearDownWorld(cls):
        for r in cls.registrars.values():
            r.stop()
        cls.lbd.stop(expect_rc=0)

    # -- helpers ---------------------------------------------------------

    def live_ids(self):
        return set(self.lbd.backends(POOL))

    def wait_backends_listed(self, ids, timeout=None):
        wait_until(lambda: set(ids) <= self.live_ids(), timeout or scaled(10),
                   "lbctl backends %s to list %s" % (POOL, sorted(ids)))

    def assert_split(self, counts, expected_ids, n_each, slack=10):
        self.assertNotIn(None, counts, "connections without an answer: %r" % counts)
        self.assertEqual(set(counts), set(expected_ids), "ids that answered: %r" % counts)
        for i in expected_ids:
            self.assertLessEqual(abs(counts[i] - n_each), slack,
                                 "%s got %d connections, expected %d+-%d: %r"
                                 % (i, counts[i], n_each, slack, counts))

    # -- the story -------------------------------------------------------

    def test_1_three_registered_backends_share_300_connections(self):
        self.wait_backends_listed({"b1", "b2", "b3"})
        listed = self.lbd.backends(POOL)
        for i in ("b1", "b2", "b3"):
            self.assertEqual(listed[i]["addr"], self.backends[i].addr, listed[i])
            self.assertFalse(listed[i].get("drain", False), listed[i])
        # The listing can run ahead of the data path by a moment: wait until
        # every backend has answered once, then count from a clean start.
        seen = set()
        wait_until(lambda: seen.add(ask(self.port)) or {"b1", "b2", "b3"} <= seen,
                   scaled(10), "all three backends to answer through lbd")
        before = {i: b.count() for i, b in self.backends.items()}
        counts = ask_many(self.port, 300)
        self.assert_split(counts, ["b1", "b2", "b3"], 100)
        for i, b in self.backends.items():
            self.assertEqual(b.count() - before[i], counts[i], "backend-side count of %s" % i)
        self.assertEqual(self.lbd.http_get("/healthz")[0], 200)
        self.assertTrue(self.lbd.metrics(), "/metrics has samples")

    def test_2_sigterm_to_registrar_stops_new_connections_within_1s(self):
        victim, reg = self.backends["b1"], self.registrars["b1"]
        self.assertIn("b1", set(ask_many(self.port, 6)), "b1 serves before the SIGTERM")
        t0 = time.monotonic()
        reg.proc.send_signal(signal.SIGTERM)
        answers = []  # (seconds after SIGTERM, id)
        window = 4.0  # longer than the 2 s TTL: a registrar that does not revoke shows up
        while time.monotonic() - t0 < window:
            try:
                answers.append((time.monotonic() - t0, ask(self.port)))
            except OSError as exc:
                answers.append((time.monotonic() - t0, "error: %s" % exc))
            time.sleep(0.004)  # ~200 probes/s: fine enough for a 1 s bound, easy on the CPU
        rc = reg.stop()
        self.assertEqual(rc, 0, "lbctl register exit code after SIGTERM:\n" + reg.proc.log_tail(20))
        self.assertIsNone(self.etcd.get(reg.key), "key %s still in etcd after SIGTERM" % reg.key)

        failed = [a for a in answers if a[1] not in ("b1", "b2", "b3")]
        self.assertEqual(failed, [], "connections that got no backend while b1 left")
        to_b1 = [t for t, i in answers if i == "b1"]
        last_client = max(to_b1) if to_b1 else 0.0
        backend_side = victim.client_times(t0)
        last_backend = (max(backend_side) - t0) if backend_side else 0.0
        after = [i for t, i in answers if t > 1.0]
        sys.stderr.write("b1 after SIGTERM: %d of %d probes answered by b1 (last %s), "
                         "backend accepts %d (last %s)\n"
                         % (len(to_b1), len(answers), "%.3fs" % last_client if to_b1 else "-",
                            len(backend_side), "%.3fs" % last_backend if backend_side else "-"))
        self.assertLessEqual(last_client, 1.0, "b1 still answered %.3fs after SIGTERM" % last_client)
        self.assertLessEqual(last_backend, 1.0, "b1 still accepted %.3fs after SIGTERM" % last_backend)
        self.assertGreater(len(after), 10, "too few probes after 1 s to tell: %d" % len(after))
        self.assertEqual(set(after), {"b2", "b3"})
        wait_until(lambda: "b1" not in self.live_ids(), scaled(5), "b1 gone from lbctl backends")

    def test_3_drain_stops_new_connections_but_keeps_open_ones(self):
        victim = self.backends["b2"]
        held = None
        for _ in range(20):
            s, bid = open_conn(self.port)
            if bid == "b2":
                held = s
                break
            s.close()
        self.assertIsNotNone(held, "no connection landed on b2 in 20 tries")
        self.addCleanup(held.close)
        self.assertEqual(echo(held, b"before drain\n"), b"before drain\n")

        rc, out, err = self.lbd.ctl("drain", POOL, "b2")
        self.assertEqual(rc, 0, "lbctl drain %s b2: %s %s" % (POOL, out, err))
        before = victim.count()
        counts = ask_many(self.port, 100)
        self.assertEqual(victim.count(), before, "b2 accepted new connections after lbctl drain")
        self.assertEqual(dict(counts), {"b3": 100}, "connections after draining b2")

        self.assertEqual(echo(held, b"still here after drain\n"), b"still here after drain\n")
        listed = self.lbd.backends(POOL)["b2"]
        self.assertTrue(listed.get("drain"), "lbctl -o json backends: %r" % listed)
        self.assertEqual(listed.get("state"), "draining",
                         "draining while a connection is still open: %r" % listed)
        held.close()
        wait_until(lambda: self.lbd.backends(POOL)["b2"].get("state") == "drained", scaled(5),
                   "b2 drained once its last connection closed")

    def test_4_etcdctl_put_of_a_new_backend_makes_it_receive_connections(self):
        b4 = Backend(self.h, "b4")
        self.backends["b4"] = b4
        key = backend_key(PREFIX, POOL, "b4")
        value = json.dumps({"addr": b4.addr, "weight": 100})
        rc, out, err = self.etcd.etcdctl("put", key, value)
        self.assertEqual(rc, 0, err)
        wait_until(lambda: ask(self.port) == "b4", scaled(5), "b4 to answer through lbd")
        counts = ask_many(self.port, 200)
        self.assert_split(counts, ["b3", "b4"], 100)
        listed = self.lbd.backends(POOL)
        self.assertEqual(listed["b4"]["addr"], b4.addr)

    def test_5_malformed_values_are_logged_with_their_key_and_skipped(self):
        bad = {
            backend_key(PREFIX, POOL, "bad-json"): '{"addr":',
            backend_key(PREFIX, POOL, "bad-addr"): '{"addr":"nonsense"}',
            "%spools/%s/config" % (PREFIX, POOL): '{"algorithm":',
        }
        for key, value in bad.items():
            rc, out, err = self.etcd.etcdctl("put", key, value)
            self.assertEqual(rc, 0, err)
        for key in bad:
            wait_until(lambda: any(key in line for line in self.lbd.log_text().splitlines()),
                       scaled(5), "an lbd log line naming %s" % key)
        self.assertTrue(self.lbd.proc.alive(), "lbd died on malformed values")
        self.assertEqual(self.lbd.http_get("/healthz")[0], 200)
        self.assertEqual(self.lbd.http_get("/readyz")[0], 200)
        counts = ask_many(self.port, 40)
        self.assertEqual(set(counts), {"b3", "b4"}, "after malformed values: %r" % counts)
        listed = self.lbd.backends(POOL)
        self.assertFalse({"bad-json", "bad-addr"} & set(listed),
                         "malformed backends listed: %r" % sorted(listed))
        for key in bad:
            self.etcd.delete(key)

    def test_6_lbctl_backends_table_and_json(self):
        rc, out, err = self.lbd.ctl("backends", POOL)
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        for i in ("b2", "b3", "b4"):
            rows = [ln for ln in lines if i in ln.split()]
            self.assertEqual(len(rows), 1, "one table row for %s in:\n%s" % (i, out))
            self.assertIn(self.backends[i].addr, rows[0])
        self.assertFalse([ln for ln in lines if "b1" in ln.split()], "b1 still listed:\n" + out)
        header = [ln for ln in lines if "STATE" in ln.upper().split()]
        self.assertTrue(header, "a header with a STATE column in:\n" + out)
        col = header[0].upper().split().index("STATE")
        for i in ("b2", "b3", "b4"):
            row = [ln for ln in lines if i in ln.split()][0].split()
            shown = row[col] if col < len(row) else ""
            drained = shown.lower() in ("draining", "drained")
            self.assertEqual(drained, i == "b2", "STATE column of %s is %r in:\n%s" % (i, shown, out))

        listed = self.lbd.backends(POOL)
        self.assertEqual(set(listed), {"b2", "b3", "b4"})
        for i, b in listed.items():
            self.assertEqual(b["addr"], self.backends[i].addr)
            self.assertEqual(bool(b.get("drain")), i == "b2", b)
        # Without a pool: every pool, same backends here.
        everything = {b["id"] for b in lbtest.backends_from_json(self.lbd.ctl_json("backends"))}
        self.assertEqual(everything, {"b2", "b3", "b4"})


if __name__ == "__main__":
    lbtest.main()
