#!/usr/bin/python3
"""`lbctl show sessions` and `lbctl kill sessions` (HAProxy's `show sess`
and `shutdown sessions server`) against lbd --workers 2:

  1. six connections held open across two backends (three each, spread
     over both workers by their source ports), each with its own exchange:
     `show sessions web` lists exactly them, oldest first, with the right
     backend, state proxying and bytes in/out equal to what the client
     sent and received; `show sessions web b2` only b2's; `-o json` the
     same, with total;
  2. `kill sessions web b1` prints how many it closed (3), exit 0; b1's
     clients see the end (EOF or reset), b2's keep echoing; one access
     line per killed session with end=killed and backend=b1; `show
     sessions` then lists b2's three only;
  3. an unknown pool or backend is one line on stderr, exit 1; `show
     nonsense` is a usage error, exit 2.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (HELLO, Backend, Etcd, HarnessTestCase, Lbd, client_of, echo,  # noqa: E402
                    ended, lbctl, open_conn, parse_kv, scaled, wait_until)

PREFIX = "/sessions/"
POLICY = {"health": {"type": "none"}}
PER_BACKEND = 3


class SessionsTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        cls.etcd.put("%spools/web/config" % PREFIX, json.dumps(POLICY))
        cls.backends = {bid: Backend(cls.h, bid) for bid in ("b1", "b2")}
        for bid, b in cls.backends.items():
            cls.etcd.put("%spools/web/backends/%s" % (PREFIX, bid),
                         json.dumps({"addr": b.addr, "weight": 100}))
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, ["web"],
                      extra_args=["--workers", "2"]).start()
        wait_until(lambda: len(cls.lbd.backends("web")) == 2, scaled(10), "the backends of web")

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    def ctl(self, *args, output=None):
        return lbctl(*args, admin=self.lbd.admin, output=output)

    def listed(self, *args):
        rc, out, err = self.ctl("show", "sessions", "web", *args, output="json")
        self.assertEqual(rc, 0, err)
        return json.loads(out)

    def open_sessions(self):
        """PER_BACKEND connections to each backend, each after an exchange of
        its own size: {client: (socket, backend, bytes_in, bytes_out)}."""
        conns = {}
        have = {"b1": 0, "b2": 0}
        port = self.lbd.pool_port("web")
        deadline = time.monotonic() + scaled(20)
        while min(have.values()) < PER_BACKEND:
            self.assertLess(time.monotonic(), deadline, "connections to both backends")
            s, bid = open_conn(port, timeout=scaled(5))
            self.addCleanup(s.close)
            if have.get(bid, PER_BACKEND) >= PER_BACKEND:
                s.close()  # one too many for this backend: its session ends
                continue
            have[bid] += 1
            payload = b"x" * (100 * len(conns) + 7) + b"\n"
            self.assertEqual(echo(s, payload), payload)
            bytes_in = len(HELLO) + len(payload)
            bytes_out = len(bid) + 1 + len(HELLO) + len(payload)
            conns[client_of(s)] = (s, bid, bytes_in, bytes_out)
        # the extras closed by the client end in their own time
        wait_until(lambda: self.listed()["total"] == len(conns), scaled(5),
                   "only the kept sessions left open")
        return conns

    def test_show_and_kill(self):
        conns = self.open_sessions()

        # -o json: exactly these, right backends and bytes, oldest first
        got = self.listed()
        self.assertEqual(got["total"], 2 * PER_BACKEND)
        self.assertEqual(got["not_listed"], 0)
        rows = got["sessions"]
        self.assertEqual(sorted(r["client"] for r in rows), sorted(conns))
        for r in rows:
            _, bid, bytes_in, bytes_out = conns[r["client"]]
            self.assertEqual((r["backend"], r["state"], r["bytes_in"], r["bytes_out"]),
                             (bid, "proxying", bytes_in, bytes_out), r)
            self.assertIn(r["worker"], (0, 1))
            self.assertGreaterEqual(r["age_s"], r["idle_s"])
        ages = [r["age_s"] for r in rows]
        self.assertEqual(ages, sorted(ages, reverse=True), "oldest first")
        self.assertEqual(sorted(r["client"] for r in rows), sorted(conns))
        print("figure: sessions on workers %s" % sorted(r["worker"] for r in rows))

        # filtered by backend
        b2 = self.listed("b2")
        self.assertEqual(sorted(r["client"] for r in b2["sessions"]),
                         sorted(c for c, v in conns.items() if v[1] == "b2"))

        # the table: a header and one row per session
        rc, out, err = self.ctl("show", "sessions", "web")
        self.assertEqual(rc, 0, err)
        lines = out.strip().splitlines()
        self.assertEqual(lines[0].split()[:4], ["CLIENT", "BACKEND", "WORKER", "STATE"])
        self.assertEqual(len(lines), 1 + 2 * PER_BACKEND, out)
        for c, (_, bid, bytes_in, bytes_out) in conns.items():
            row = [ln.split() for ln in lines[1:] if ln.split()[0] == c]
            self.assertEqual(len(row), 1, out)
            self.assertEqual(row[0][1], bid)
            self.assertEqual(row[0][6:8], [str(bytes_in), str(bytes_out)])

        # kill b1's
        rc, out, err = self.ctl("kill", "sessions", "web", "b1")
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(out.strip(), "closed %d sessions to web/b1" % PER_BACKEND)
        for c, (s, bid, _, _) in conns.items():
            if bid == "b1":
                self.assertIn(ended(s, scaled(5)), ("eof", "reset"), c)
        for c, (s, bid, _, _) in conns.items():
            if bid == "b2":
                s.settimeout(scaled(5))
                self.assertEqual(echo(s, b"still here\n"), b"still here\n", c)

        # their access lines say killed
        killed = {c for c, v in conns.items() if v[1] == "b1"}

        def killed_lines():
            return [a for a in (parse_kv(ln) for ln in self.lbd.log_text().splitlines()
                                if " sub=access " in ln)
                    if a.get("client") in killed]

        wait_until(lambda: len(killed_lines()) == PER_BACKEND, scaled(5), "the killed lines")
        for a in killed_lines():
            self.assertEqual((a["end"], a["backend"], a["pool"]), ("killed", "b1", "web"), a)

        left = self.listed()
        self.assertEqual(sorted(r["client"] for r in left["sessions"]),
                         sorted(c for c, v in conns.items() if v[1] == "b2"))

        # nothing left to kill: 0, still exit 0
        rc, out, err = self.ctl("kill", "sessions", "web", "b1", output="json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out), {"killed": 0})

    def test_unknown_pool_or_backend(self):
        for args, what in ((("show", "sessions", "nope"), "pool nope not found"),
                           (("kill", "sessions", "nope", "b1"), "pool nope not found"),
                           (("show", "sessions", "web", "b9"), "backend web/b9 not found"),
                           (("kill", "sessions", "web", "b9"), "backend web/b9 not found")):
            rc, out, err = self.ctl(*args)
            self.assertEqual(rc, 1, (args, out, err))
            self.assertEqual(out, "")
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(what, err)
            self.assertIn("NOT_FOUND", err)

    def test_show_what(self):
        rc, out, err = self.ctl("show", "nonsense", "web")
        self.assertEqual(rc, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)


if __name__ == "__main__":
    from lbtest import main
    main()
