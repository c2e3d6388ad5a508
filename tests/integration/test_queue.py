#!/usr/bin/python3
"""Queueing at capacity (a pool's queue_timeout, HAProxy's `timeout queue`)
against lbd --workers 2, with one backend at max_conns 1:

  1. FIFO across workers: a client holds the one slot; eight more arrive
     one after the other (each counted in lbd_pool_queue_length before the
     next, so their order is known), each sending its name at once, and
     spread over both workers by their source ports.  The holder leaves:
     the backend sees the eight in arrival order, never two at once; each
     access line carries queue_ms; the queue is 0 after;
  2. the timeout: with queue_timeout 400ms a client waits, then is closed
     (EOF) between 0.4 and 2 s after it came; its bytes never reached the
     backend; one access line end=queue_timeout, queue_ms >= 400, no
     backend=; lbd_pool_queue_timeouts_total counts it;
  3. a client that leaves while queued, before it sent anything, is gone
     from the queue at once, and the slot goes to the one behind it
     (end=client_closed, queue_ms=).  (One that sent bytes and then a FIN
     stays queued: that is a half-close, its request is still owed an
     answer, as HAProxy without abortonclose);
  4. room without a release: max_conns raised from 1 to 3 in etcd lets the
     two waiting clients in while the holder stays;
  5. while clients wait: /status.json gives the pool's "queued",
     `lbctl pools` the QUEUED column and `-o json` "queued",
     `lbctl show sessions` the waiting clients with state queued;
  6. queue_timeout 0 (the default): the client is closed at once
     (end=no_backend), nothing waits;
  7. every algorithm (wrr, leastconn, p2c, maglev) over two backends at
     max_conns 1: two holders, four waiting; as holders and then the served
     leave one at a time, the four are served in arrival order and no
     backend ever holds two;
  8. a crowd: 2,000 clients at once on a backend at max_conns 20 all wait
     and are all served, never more than 20 at once, while /metrics keeps
     answering; the time to drain the queue is a figure;
  9. queue_timeout changed while clients wait: lowered below what they
     have waited, they are closed at once (end=queue_timeout), not at the
     deadline they queued with; turned off (0), every waiting client is
     closed at once; the holder is never disturbed; with max_conns
     lifted in the same change, the waiting clients are served instead;
 10. the backend the clients wait for is drained, forced down or set to
     weight 0, and the holder leaves: nobody is closed early, both keep
     their place, and a backend added later serves them oldest first.
"""

import json
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (Etcd, HarnessTestCase, Lbd, ThreadedServer, client_of, ended,  # noqa: E402
                    figure, lbctl, parse_kv, raise_nofile, recv_line_bytes, scaled, wait_until)

PREFIX = "/queue/"
NO_CHECKS = {"type": "none", "fall": 50}
QUEUE_S = 0.4
POLICIES = {
    "fifo": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "20s"},
    "short": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "%dms" % (QUEUE_S * 1000)},
    "leave": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "20s"},
    "raise": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "20s"},
    "off": {"health": NO_CHECKS, "max_conns": 1},
    "algos": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "20s"},
    "crowd": {"health": NO_CHECKS, "max_conns": 20, "queue_timeout": "60s"},
    "retime": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "20s"},
    "gone": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "20s"},
}
CROWD = 2000
ALGOS_BACKENDS = 2


class NameBackend(ThreadedServer):
    """Reads the first line of each connection ("NAME x"), records x in the
    order connections reach it and the peak of connections open at once,
    answers "OK x" and reads until EOF."""

    def __init__(self, h):
        self.names = []
        self.open = 0
        self.peak = 0
        super().__init__(h)

    def serve(self, c, _):
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        try:
            line = recv_line_bytes(c)
            if line is None:
                return
            name = line.split()[1].decode()
            with self.lock:
                self.names.append(name)
            c.sendall(b"OK " + name.encode() + b"\n")
            while c.recv(4096):
                pass
        finally:
            with self.lock:
                self.open -= 1

    def seen(self):
        with self.lock:
            return list(self.names)


class QueueTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        raise_nofile()
        cls.etcd = Etcd(cls.h).start()
        cls.backends = {}
        for pool, policy in POLICIES.items():
            cls.etcd.put("%spools/%s/config" % (PREFIX, pool), json.dumps(policy))
            b = cls.backends[pool] = NameBackend(cls.h)
            cls.etcd.put("%spools/%s/backends/b1" % (PREFIX, pool),
                         json.dumps({"addr": b.addr, "weight": 100}))
        cls.algo_backends = [cls.backends["algos"], NameBackend(cls.h)]
        cls.etcd.put("%spools/algos/backends/b2" % PREFIX,
                     json.dumps({"addr": cls.algo_backends[1].addr, "weight": 100}))
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, list(POLICIES),
                      extra_args=["--workers", "2"]).start()
        for pool in POLICIES:
            n = ALGOS_BACKENDS if pool == "algos" else 1
            wait_until(lambda: len(cls.lbd.backends(pool)) == n, scaled(10),
                       "the backends of %s" % pool)

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    def queued(self, pool):
        return self.lbd.metric("lbd_pool_queue_length", pool=pool)

    def wait_queued(self, pool, n):
        wait_until(lambda: self.queued(pool) == n, scaled(5),
                   "%d clients queued in %s" % (n, pool))

    def connect(self, pool, name=None):
        """A client that sends its name at once (it stays in the kernel while queued)."""
        s = socket.create_connection(("127.0.0.1", self.lbd.pool_port(pool)), timeout=scaled(10))
        self.addCleanup(s.close)
        if name:
            s.sendall(b"NAME " + name.encode() + b"\n")
        return s

    def hold(self, pool, name="holder"):
        s = self.connect(pool, name)
        self.assertEqual(recv_line_bytes(s), b"OK " + name.encode() + b"\n")
        return s

    def access_lines(self, pool, client):
        """The access lines of one client of one pool (a port comes back in other tests)."""
        return [parse_kv(ln) for ln in self.lbd.log_text().splitlines()
                if " sub=access " in ln and (" pool=%s " % pool) in ln and
                (" client=%s " % client) in ln]

    def one_line(self, pool, client):
        wait_until(lambda: self.access_lines(pool, client), scaled(5),
                   "the access line of %s" % client)
        got = self.access_lines(pool, client)
        self.assertEqual(len(got), 1, got)
        return got[0]

    def test_1_fifo_across_workers(self):
        pool, n = "fifo", 8
        holder = self.hold(pool)
        waiting = []
        for i in range(n):
            waiting.append(self.connect(pool, "c%d" % i))
            self.wait_queued(pool, i + 1)
        t0 = time.monotonic()
        clients = [client_of(s) for s in [holder] + waiting]
        holder.close()
        for i, s in enumerate(waiting):
            self.assertEqual(recv_line_bytes(s), b"OK c%d\n" % i, "client %d out of turn" % i)
            s.close()  # frees the slot for the next
        took = time.monotonic() - t0
        self.assertEqual(self.backends[pool].seen(), ["holder"] + ["c%d" % i for i in range(n)])
        self.assertEqual(self.backends[pool].peak, 1, "max_conns 1 exceeded")
        figure("queue: %d clients served in arrival order, handing over took" % n,
               "%.1f" % (took * 1e3 / n), "ms each")
        self.wait_queued(pool, 0)
        self.assertEqual(self.lbd.metric("lbd_pool_queued_total", pool=pool), n)
        self.assertEqual(self.lbd.metric("lbd_pool_queue_timeouts_total", pool=pool), 0)
        line = self.one_line(pool, clients[-1])
        self.assertEqual((line["backend"], line["end"]), ("b1", "client_closed"))
        self.assertGreater(float(line["queue_ms"]), 0.0)
        holder_line = self.one_line(pool, clients[0])
        self.assertNotIn("queue_ms", holder_line, "a client that did not wait has no queue_ms")

    def test_2_timeout_closes_and_counts(self):
        pool = "short"
        holder = self.hold(pool)
        before = self.lbd.metric("lbd_pool_queue_timeouts_total", pool=pool)
        t0 = time.monotonic()
        s = self.connect(pool, "late")
        client = client_of(s)
        how = ended(s, scaled(5))
        waited = time.monotonic() - t0
        figure("queue: client closed at queue_timeout %.1f s after" % QUEUE_S, "%.3f" % waited,
               "s")
        self.assertEqual(how, "eof")
        self.assertGreaterEqual(waited, QUEUE_S - 0.02)
        self.assertLess(waited, QUEUE_S + scaled(1.5))
        line = self.one_line(pool, client)
        self.assertEqual(line["end"], "queue_timeout")
        self.assertNotIn("backend", line)
        self.assertGreaterEqual(float(line["queue_ms"]), QUEUE_S * 1000 - 20)
        self.assertEqual(self.lbd.metric("lbd_pool_queue_timeouts_total", pool=pool), before + 1)
        self.assertEqual(self.queued(pool), 0)
        self.assertEqual(self.backends[pool].seen(), ["holder"], "a timed-out client's bytes")
        holder.sendall(b"still here")  # the holder was never disturbed
        holder.close()

    def test_3_client_leaving_the_queue(self):
        pool = "leave"
        holder = self.hold(pool)
        gone = self.connect(pool)
        gone_client = client_of(gone)
        self.wait_queued(pool, 1)
        after = self.connect(pool, "after")
        self.wait_queued(pool, 2)
        gone.close()
        self.wait_queued(pool, 1)
        line = self.one_line(pool, gone_client)
        self.assertEqual(line["end"], "client_closed")
        self.assertIn("queue_ms", line)
        holder.close()
        self.assertEqual(recv_line_bytes(after), b"OK after\n")
        self.assertEqual(self.backends[pool].seen(), ["holder", "after"])
        after.close()

    def test_4_raising_max_conns_lets_the_waiting_in(self):
        pool = "raise"
        holder = self.hold(pool)
        a, b = self.connect(pool, "a"), self.connect(pool, "b")
        self.wait_queued(pool, 2)
        t0 = time.monotonic()
        policy = dict(POLICIES[pool], max_conns=3)
        self.etcd.put("%spools/%s/config" % (PREFIX, pool), json.dumps(policy))
        self.assertEqual(recv_line_bytes(a), b"OK a\n")
        self.assertEqual(recv_line_bytes(b), b"OK b\n")
        figure("queue: max_conns raised, both waiting clients in after",
               "%.1f" % ((time.monotonic() - t0) * 1e3), "ms")
        self.assertEqual(self.queued(pool), 0)
        for s in (a, b, holder):
            s.close()

    def test_5_status_page_and_lbctl_show_the_queue(self):
        pool = "leave"
        holder = self.hold(pool)
        waiting = [self.connect(pool) for i in range(3)]  # silent: closing leaves the queue
        self.wait_queued(pool, 3)
        status = json.loads(self.lbd.http_get("/status.json")[1])
        got = {p["name"]: p["queued"] for p in status["pools"]}
        self.assertEqual(got[pool], 3)
        self.assertEqual(got["fifo"], 0)
        rc, out, err = lbctl("pools", admin=self.lbd.admin)
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[-1], "QUEUED")
        row = [ln.split() for ln in lines[1:] if ln.split()[0] == pool][0]
        self.assertEqual(row[-1], "3")
        rc, out, err = lbctl("pools", admin=self.lbd.admin, output="json")
        self.assertEqual(rc, 0, err)
        self.assertEqual({p["name"]: p["queued"] for p in json.loads(out)["pools"]}[pool], 3)
        rc, out, err = lbctl("show", "sessions", pool, admin=self.lbd.admin, output="json")
        self.assertEqual(rc, 0, err)
        states = sorted(s["state"] for s in json.loads(out)["sessions"])
        self.assertEqual(states, ["proxying", "queued", "queued", "queued"])
        for s in waiting:
            s.close()
        self.wait_queued(pool, 0)
        holder.close()

    def test_6_queue_off_closes_at_once(self):
        pool = "off"
        holder = self.hold(pool)
        t0 = time.monotonic()
        s = self.connect(pool, "turned-away")
        client = client_of(s)
        self.assertIn(ended(s, scaled(5)), ("eof", "reset"))
        figure("queue off: client closed after", "%.3f" % (time.monotonic() - t0), "s")
        self.assertLess(time.monotonic() - t0, scaled(1))
        line = self.one_line(pool, client)
        self.assertEqual(line["end"], "no_backend")
        self.assertNotIn("queue_ms", line)
        self.assertEqual(self.lbd.metric("lbd_pool_queued_total", pool=pool), 0)
        holder.close()

    def test_7_every_algorithm_queues_in_order(self):
        pool = "algos"
        for algo in ("wrr", "leastconn", "p2c", "maglev"):
            with self.subTest(algorithm=algo):
                policy = dict(POLICIES[pool], algorithm=algo)
                self.etcd.put("%spools/%s/config" % (PREFIX, pool), json.dumps(policy))
                wait_until(lambda: "pool=algos algorithm=%s " % algo in self.lbd.log_text(),
                           scaled(5), "lbd to apply %s" % algo)
                for b in self.algo_backends:
                    b.peak = b.open
                    b.names.clear()
                holders = [self.hold(pool, "h%d" % i) for i in range(ALGOS_BACKENDS)]
                waiting = []
                for i in range(4):
                    waiting.append(self.connect(pool, "%s%d" % (algo, i)))
                    self.wait_queued(pool, i + 1)
                ahead = holders + waiting
                for i, s in enumerate(waiting):
                    ahead.pop(0).close()  # the oldest connection leaves: one slot frees
                    self.assertEqual(recv_line_bytes(s), b"OK %s%d\n" % (algo.encode(), i),
                                     "%s: client %d out of turn" % (algo, i))
                for s in ahead:
                    s.close()
                self.wait_queued(pool, 0)
                self.assertEqual([b.peak for b in self.algo_backends], [1, 1],
                                 "%s: a backend held two" % algo)
                seen = sorted(n for b in self.algo_backends for n in b.seen()
                              if n.startswith(algo))
                self.assertEqual(seen, ["%s%d" % (algo, i) for i in range(4)])

    def test_8_a_crowd_waits_and_is_served(self):
        pool, cap = "crowd", POLICIES["crowd"]["max_conns"]
        backend = self.backends[pool]
        sel = selectors.DefaultSelector()
        t0 = time.monotonic()
        for i in range(CROWD):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.lbd.pool_port(pool)))
            sel.register(s, selectors.EVENT_WRITE, [i, b""])
        pending, served, peak_queue = CROWD, 0, 0
        deadline = time.monotonic() + scaled(60)
        last_metrics = 0.0
        while pending and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=0.5):
                s, st = key.fileobj, key.data
                if ev & selectors.EVENT_WRITE:
                    s.send(b"NAME c%d\n" % st[0])  # small: the kernel takes it whole
                    sel.modify(s, selectors.EVENT_READ, st)
                    continue
                try:
                    d = s.recv(64)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    d = b""
                st[1] += d
                if not d or st[1].endswith(b"\n"):
                    if st[1] == b"OK c%d\n" % st[0]:
                        served += 1
                    sel.unregister(s)
                    s.close()
                    pending -= 1
            if time.monotonic() - last_metrics > 0.5:  # lbd keeps answering meanwhile
                last_metrics = time.monotonic()
                peak_queue = max(peak_queue, self.queued(pool))
        took = time.monotonic() - t0
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
        figure("queue: %d clients through a backend at max_conns %d" % (CROWD, cap),
               "%.2f s, peak queue %d" % (took, peak_queue))
        self.assertEqual(served, CROWD, "clients not served")
        self.assertLessEqual(backend.peak, cap, "max_conns exceeded")
        self.assertGreater(peak_queue, cap, "the crowd never queued")
        self.wait_queued(pool, 0)
        self.assertEqual(self.lbd.metric("lbd_pool_queue_timeouts_total", pool=pool), 0)

    def set_policy(self, pool, **fields):
        """Writes the pool's policy with fields changed; returns once lbd applied it."""
        def applied():
            return self.lbd.log_text().count('msg="policy applied" pool=%s ' % pool)
        n = applied()
        self.etcd.put("%spools/%s/config" % (PREFIX, pool), json.dumps(dict(POLICIES[pool],
                                                                            **fields)))
        wait_until(lambda: applied() > n, scaled(5), "lbd to apply %s's policy" % pool)

    def test_9_queue_timeout_changed_while_clients_wait(self):
        pool = "retime"
        holder = self.hold(pool)
        t0 = time.monotonic()
        s = self.connect(pool, "waited-1s")
        client = client_of(s)
        self.wait_queued(pool, 1)
        wait_until(lambda: time.monotonic() - t0 > 1.0, 5, "the client waiting 1 s")
        t1 = time.monotonic()
        self.set_policy(pool, queue_timeout="1s")  # already past for this client
        self.assertEqual(ended(s, scaled(5)), "eof")
        figure("queue: queue_timeout lowered below the wait, client closed after",
               "%.1f" % ((time.monotonic() - t1) * 1e3), "ms")
        self.assertLess(time.monotonic() - t1, scaled(2), "closed only at the old deadline")
        line = self.one_line(pool, client)
        self.assertEqual(line["end"], "queue_timeout")
        self.assertGreaterEqual(float(line["queue_ms"]), 1000)

        self.set_policy(pool, queue_timeout="20s")
        waiting = [self.connect(pool, "w%d" % i) for i in range(3)]
        self.wait_queued(pool, 3)
        t1 = time.monotonic()
        self.set_policy(pool, queue_timeout="0s")
        for w in waiting:
            self.assertEqual(ended(w, scaled(5)), "eof")
        self.assertLess(time.monotonic() - t1, scaled(2))
        self.wait_queued(pool, 0)
        self.assertEqual(self.backends[pool].seen(), ["holder"])

        # queueing and the cap lifted together: the waiting are let in, not closed
        self.set_policy(pool, queue_timeout="20s")
        waiting = [self.connect(pool, "x%d" % i) for i in range(2)]
        self.wait_queued(pool, 2)
        self.set_policy(pool, queue_timeout="0s", max_conns=0)
        for i, w in enumerate(waiting):
            self.assertEqual(recv_line_bytes(w), b"OK x%d\n" % i)
            w.close()
        self.wait_queued(pool, 0)
        holder.sendall(b"still here")
        holder.close()

    def test_10_waiting_clients_outlive_their_backend(self):
        pool = "gone"
        for i, how in enumerate((["drain", pool, "b1"], ["health", pool, "b1", "down"],
                                 ["weight", pool, "b1", "0"])):
            with self.subTest(how=how[0]):
                holder = self.hold(pool, "holder%d" % i)
                older, younger = self.connect(pool, "older%d" % i), None
                self.wait_queued(pool, 1)
                younger = self.connect(pool, "younger%d" % i)
                self.wait_queued(pool, 2)
                rc, out, err = lbctl(*how, "--local", admin=self.lbd.admin)
                self.assertEqual(rc, 0, err)
                holder_client = client_of(holder)
                holder.close()
                self.one_line(pool, holder_client)  # the slot is free: nobody may take it now
                self.assertEqual(self.queued(pool), 2, "a waiting client was closed early")
                # another backend comes: the older first, then the younger
                extra = NameBackend(self.h)
                self.etcd.put("%spools/%s/backends/x%d" % (PREFIX, pool, i),
                              json.dumps({"addr": extra.addr, "weight": 100}))
                self.assertEqual(recv_line_bytes(older), b"OK older%d\n" % i)
                older.close()
                self.assertEqual(recv_line_bytes(younger), b"OK younger%d\n" % i)
                younger.close()
                self.wait_queued(pool, 0)
                self.etcd.delete("%spools/%s/backends/x%d" % (PREFIX, pool, i))
                undo = {"drain": ["undrain", pool, "b1"], "health": ["health", pool, "b1", "auto"],
                        "weight": ["weight", pool, "b1", "--clear"]}[how[0]]
                rc, out, err = lbctl(*undo, "--local", admin=self.lbd.admin)
                self.assertEqual(rc, 0, err)
                wait_until(lambda: list(self.lbd.backends(pool)) == ["b1"] and
                           self.lbd.metric("lbd_pool_eligible_backends", pool=pool) == 1,
                           scaled(5), "b1 alone and eligible again")


if __name__ == "__main__":
    from lbtest import main
    main()
