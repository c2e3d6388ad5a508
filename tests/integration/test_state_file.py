#!/usr/bin/python3
"""lbd --state-file: the last view of etcd, kept on disk.

An lbd that crashes and starts again while etcd is out of reach serves the
pools it last knew (backends, policies, overrides) from the file, instead
of none, and catches up with etcd once it answers.  A file that is not
whole, of another prefix or not lbd's is never used in part: lbd says why
and lists etcd first.  A write that fails is logged and counted, and lbd
serves on; flags that cannot work are refused before anything starts.
"""

import base64
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd, UpgradeLbd, ask,  # noqa: E402
                    backend_key, backend_value, figure, lbd_pool, override_key, run, scaled,
                    wait_until)

PREFIX = "/lbtest-state/"
POOL = "web"
STARTED_MARK = "started from the state file"


def read_state(path):
    """{key: value} of an lbd state file, and its "lbd" member; (None, None) when unreadable."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None, None
    kvs = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
           for kv in doc.get("kvs", [])}
    return kvs, doc.get("lbd")


class StateFile(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)
        self.etcd = Etcd(self.h).start()
        self.state = self.h.path("state", "lbd.state")
        os.makedirs(os.path.dirname(self.state))

    def lbd(self, prefix=PREFIX, state=None, name="lbd", env=None):
        path = self.state if state is None else state
        return Lbd(self.h, self.etcd.url, prefix, [POOL], name=name, env=env,
                   extra_args=["--state-file", path, "--shutdown-grace", "1s"])

    def wait_state_keys(self, keys, what):
        wait_until(lambda: set(keys) <= set((read_state(self.state)[0] or {}).keys()),
                   scaled(10), what)

    def test_1_restart_while_etcd_is_down_serves_the_last_pools(self):
        b1, b2, b3 = (Backend(self.h, i) for i in ("b1", "b2", "b3"))
        for b in (b1, b2):
            self.etcd.put(backend_key(PREFIX, POOL, b.id), backend_value(b.addr))
        self.etcd.put(override_key(PREFIX, POOL, "b2"), json.dumps({"drain": True}))
        self.etcd.put("%spools/%s/config" % (PREFIX, POOL),
                      json.dumps({"algorithm": "leastconn", "health": {"type": "none"}}))
        lbd = self.lbd().start()
        self.addCleanup(lbd.stop, None)
        self.wait_state_keys([backend_key(PREFIX, POOL, "b1"), override_key(PREFIX, POOL, "b2"),
                              "%spools/%s/config" % (PREFIX, POOL)], "the state file")
        st = os.stat(self.state)
        self.assertEqual(st.st_mode & 0o777, 0o600, "the state file holds etcd's values: 0600")
        kvs, meta = read_state(self.state)
        self.assertEqual(meta["prefix"], PREFIX)
        self.assertGreaterEqual(lbd.metric("lbd_state_file_writes_total"), 1)

        lbd.proc.kill()          # a crash
        self.etcd.kill()         # and etcd is gone too
        lbd.start()              # /readyz 200 without etcd
        line = [ln for ln in lbd.log_text().splitlines() if STARTED_MARK in ln]
        figure("started from the state file", line and line[0].split("msg=")[1])
        self.assertEqual(len(line), 1, lbd.log_text())
        served = collections.Counter(ask(lbd.pool_port(POOL)) for _ in range(20))
        self.assertEqual(served, {"b1": 20}, "b2 is drained (an override in the file)")
        backends = lbd.backends(POOL)
        self.assertEqual(set(backends), {"b1", "b2"})
        self.assertTrue(backends["b2"]["drain"], backends["b2"])
        pools = lbd.ctl_json("pools")
        figure("pools from the state file", pools)
        self.assertGreater(lbd.metric("lbd_etcd_staleness_seconds"), 0,
                           "the view is as old as the file")

        # etcd returns with a backend put meanwhile: lbd lists it and writes it down.
        self.etcd.restart()
        self.etcd.put(backend_key(PREFIX, POOL, "b3"), backend_value(b3.addr))
        wait_until(lambda: "b3" in lbd_pool(lbd, POOL), scaled(15), "b3 after etcd came back")
        self.assertIn('msg="re-listed"', lbd.log_text())
        wait_until(lambda: lbd.metric("lbd_etcd_staleness_seconds") == 0, scaled(10),
                   "staleness back to 0")
        self.wait_state_keys([backend_key(PREFIX, POOL, "b3")], "b3 in the state file")
        lbd.stop(expect_rc=0)
        self.assertFalse([f for f in os.listdir(os.path.dirname(self.state)) if ".tmp." in f],
                         "no temporary file left")

    def test_1b_values_that_turned_bad_keep_their_last_good_one(self):
        """The file holds what lbd serves: a key whose value turned bad (too
        large to read, or invalid) is written with its last good value, not
        left out or written bad, so an lbd started from the file serves it
        on, as the one before did, while etcd still holds the bad value."""
        b1, b2, b3 = (Backend(self.h, i) for i in ("b1", "b2", "b3"))
        for b in (b1, b2, b3):
            self.etcd.put(backend_key(PREFIX, POOL, b.id), backend_value(b.addr))
        ovr, cfg = override_key(PREFIX, POOL, "b2"), "%spools/%s/config" % (PREFIX, POOL)
        self.etcd.put(ovr, json.dumps({"health": "up"}))
        self.etcd.put(cfg, json.dumps({"algorithm": "leastconn", "health": {"type": "none"}}))
        lbd = self.lbd().start()
        self.addCleanup(lbd.stop, None)
        wait_until(lambda: set(lbd_pool(lbd, POOL)) == {"b1", "b2", "b3"}, scaled(10),
                   "lbd to list b1, b2 and b3")
        good = {backend_key(PREFIX, POOL, "b1"): backend_value(b1.addr),
                backend_key(PREFIX, POOL, "b2"): backend_value(b2.addr),
                ovr: json.dumps({"health": "up"})}
        self.etcd.put(backend_key(PREFIX, POOL, "b1"),
                      json.dumps({"addr": b1.addr, "pad": "x" * (300 << 10)}))
        self.etcd.put(backend_key(PREFIX, POOL, "b2"), json.dumps({"addr": "nowhere"}))
        self.etcd.put(ovr, "{health: up")
        self.etcd.put(cfg, "{")
        wait_until(lambda: lbd.log_text().count("keeping the last good one") >= 4, scaled(10),
                   "lbd to keep the last good value of four keys")
        self.assertEqual(lbd.metric("lbd_etcd_bad_keys", serving="last_good"), 4)
        self.assertEqual(lbd.metric("lbd_etcd_bad_keys", serving="nothing"), 0)
        rev = self.etcd.revision()

        def written():
            try:
                with open(self.state, "rb") as f:
                    header = json.load(f)["header"]
            except (OSError, ValueError, KeyError):
                return None
            return int(header["revision"]) >= rev and read_state(self.state)[0]
        kvs = wait_until(written, scaled(10), "a state file written after the bad values")
        for k, v in good.items():
            self.assertEqual(kvs.get(k), v, "%s in the state file" % k)
        self.assertIn('"leastconn"', kvs.get(cfg, ""))

        lbd.proc.kill()
        lbd.start()
        self.assertIn(STARTED_MARK, lbd.log_text())
        wait_until(lambda: lbd.log_text().count("keeping the last good one") >= 4, scaled(10),
                   "the new lbd to list etcd and keep the last good values")
        self.assertEqual(lbd.metric("lbd_etcd_bad_keys", serving="last_good"), 4)
        backends = lbd.backends(POOL)
        figure("bad values across a restart from the state file", {
            b: backends.get(b, {}).get("addr") for b in ("b1", "b2", "b3")})
        self.assertEqual({b: backends[b]["addr"] for b in backends},
                         {"b1": b1.addr, "b2": b2.addr, "b3": b3.addr})
        self.assertEqual(backends["b2"]["health_override"], "up", backends["b2"])
        served = collections.Counter(ask(lbd.pool_port(POOL)) for _ in range(30))
        self.assertEqual(set(served), {"b1", "b2", "b3"}, served)
        applied = [ln for ln in lbd.log_text().splitlines() if "policy applied" in ln]
        self.assertTrue(applied and "algorithm=leastconn" in applied[-1], applied)
        lbd.stop(expect_rc=0)

    def test_2_files_that_are_not_whole_are_not_used(self):
        b1 = Backend(self.h, "b1")
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr))
        good = self.lbd().start()
        self.wait_state_keys([backend_key(PREFIX, POOL, "b1")], "the state file")
        good.stop(expect_rc=0)
        with open(self.state, "rb") as f:
            whole = f.read()
        other = self.lbd(prefix="/lbtest-other/", name="lbd-other")   # keys of another prefix
        cases = [
            ("cut in half", whole[:len(whole) // 2], "not JSON"),
            ("empty", b"", "not JSON"),
            ("another format", whole.replace(b'"format":1', b'"format":99'), "another format"),
            ("a key short", whole.replace(b'"count":"1"', b'"count":"2"'), "not whole"),
            ("no lbd member", whole[:whole.index(b',\n"lbd"')] + b"}", "not an lbd state"),
        ]
        for name, content, expect in cases:
            with self.subTest(name):
                with open(self.state, "wb") as f:
                    f.write(content)
                lbd = self.lbd(name="lbd-" + name.replace(" ", "-").replace("'", ""))
                lbd.start()     # lists etcd, which answers
                self.addCleanup(lbd.stop, None)
                warn = [ln for ln in lbd.log_text().splitlines() if "state file" in ln and
                        "level=warn" in ln]
                figure("state file %s" % name, warn and warn[0].split("msg=")[1])
                self.assertTrue(any(expect in ln for ln in warn), lbd.log_text())
                self.assertNotIn(STARTED_MARK, lbd.log_text())
                self.assertEqual(ask(lbd.pool_port(POOL)), "b1")
                # and the next write replaces it with a whole one
                self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr, 90))
                wait_until(lambda: (read_state(self.state)[0] or {}).get(
                    backend_key(PREFIX, POOL, "b1"), "").find('"weight": 90') >= 0,
                    scaled(10), "a whole file again")
                lbd.stop(expect_rc=0)
        with self.subTest("another prefix"):
            other.start()
            self.addCleanup(other.stop, None)
            self.assertIn("it holds another key prefix", other.log_text())
            other.stop(expect_rc=0)

    def test_2b_files_lbd_did_not_write_are_not_replaced(self):
        """A path that names a file lbd did not write (the config file, by a slip
        of the hand) is refused before anything starts, and the file is left as
        it was."""
        config = self.h.path("state", "lbd.json")
        for name, path, content in [
            ("the config file", config, json.dumps({"pool": ["web=127.0.0.1:1"]}).encode()),
            ("garbage", self.state, b"\x00\xffnot json at all"),
            ("other JSON", self.state, json.dumps({"kvs": [], "count": "0"}).encode()),
        ]:
            with self.subTest(name):
                with open(path, "wb") as f:
                    f.write(content)
                for check in (["--check"], []):
                    rc, out, err = run(self.lbd(state=path).argv() + check, timeout=scaled(15))
                    lines = err.strip().splitlines()
                    figure("--state-file naming %s%s" % (name, " --check" if check else ""),
                           lines)
                    self.assertEqual(rc, 2, out + err)
                    self.assertIn("is not an lbd state file", lines[0])
                    with open(path, "rb") as f:
                        self.assertEqual(f.read(), content, "the file was changed")

    def test_3_a_write_that_fails_is_logged_and_lbd_serves_on(self):
        b1 = Backend(self.h, "b1")
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr))
        lbd = self.lbd().start()
        self.addCleanup(lbd.stop, None)
        self.wait_state_keys([backend_key(PREFIX, POOL, "b1")], "the state file")
        shutil.rmtree(os.path.dirname(self.state))
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr, 50))
        wait_until(lambda: lbd.metric("lbd_state_file_write_errors_total") >= 1, scaled(10),
                   "a failed write counted")
        line = [ln for ln in lbd.log_text().splitlines() if "cannot write the state file" in ln]
        figure("failed write", line and line[0].split("msg=")[1])
        self.assertEqual(len(line), 1, lbd.log_text())
        self.assertEqual(ask(lbd.pool_port(POOL)), "b1")
        self.assertEqual(lbd.http_get("/readyz")[0], 200)
        os.makedirs(os.path.dirname(self.state))
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr, 60))
        wait_until(lambda: "state file written again" in lbd.log_text(), scaled(10),
                   "the next write to succeed")
        self.wait_state_keys([backend_key(PREFIX, POOL, "b1")], "the state file again")
        lbd.stop(expect_rc=0)

    def test_3c_a_slow_disk_holds_up_nothing_else(self):
        """Each write of the state file (write, fsync, rename) runs on a thread of
        its own: with a disk that takes 2 s per write (a test hook stretches the
        fsync), lbd goes on answering /healthz and lbctl and following etcd
        meanwhile, writes the changes of that time once the write is done, and
        stops cleanly, leaving the last view on disk."""
        b1, b2 = Backend(self.h, "b1"), Backend(self.h, "b2")
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr))
        lbd = self.lbd(env={"LBD_TEST_STATE_FILE_DELAY_MS": "2000"}).start()
        self.addCleanup(lbd.stop, None)
        # The first write starts within a second of the first listing, and lasts 2 s:
        # its PATH.tmp.PID is there meanwhile.
        tmp = "%s.tmp.%d" % (self.state, lbd.proc.pid)
        wait_until(lambda: os.path.exists(tmp), scaled(5), "the first write to begin", 0.01)
        worst = 0.0
        t0 = time.monotonic()
        self.etcd.put(backend_key(PREFIX, POOL, "b2"), backend_value(b2.addr))
        seen = None
        while time.monotonic() - t0 < 2.5:
            t = time.monotonic()
            self.assertEqual(lbd.http_get("/healthz")[0], 200)
            listed = lbd.backends(POOL)
            worst = max(worst, time.monotonic() - t)
            if seen is None and "b2" in listed:
                seen = time.monotonic() - t0
            time.sleep(0.05)
        figure("slow disk: b2 listed by lbctl after its put", "%.3f" % (seen or -1), "s")
        figure("slow disk: slowest /healthz + lbctl backends meanwhile", "%.3f" % worst, "s")
        self.assertIsNotNone(seen, "b2, put while the state file was being written, listed")
        self.assertLess(seen, 1.0)
        self.assertLess(worst, 1.0, "an answer held up by the state file's write")
        # b2 is written down once the write in progress is done.
        wait_until(lambda: backend_key(PREFIX, POOL, "b2") in (read_state(self.state)[0] or {}),
                   scaled(10), "b2 in the state file")
        self.etcd.delete(backend_key(PREFIX, POOL, "b2"))
        wait_until(lambda: "b2" not in lbd.backends(POOL), scaled(10), "lbd to drop b2")
        lbd.stop(expect_rc=0)   # the last write (2 s) is waited for
        self.assertNotIn(backend_key(PREFIX, POOL, "b2"), read_state(self.state)[0],
                         "the view at exit (b2 deleted) is on disk")

    def test_3b_half_written_files_of_an_lbd_that_is_gone_are_removed(self):
        """A crash in the middle of a write leaves PATH.tmp.PID beside a whole
        PATH: the next lbd removes those of processes that are gone, once a
        minute old, and keeps a live process's (a write in progress), a fresh
        one (the pid may be another PID namespace's) and whatever is not its
        own."""
        b1 = Backend(self.h, "b1")
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr))
        gone = subprocess.Popen(["true"])
        gone.wait()
        base = os.path.basename(self.state)
        names = {
            "gone": "%s.tmp.%d" % (base, gone.pid),
            "live": "%s.tmp.%d" % (base, os.getpid()),
            "not a pid": "%s.tmp.12ab" % base,
            "another file's": "other.state.tmp.%d" % gone.pid,
        }
        names["gone, but fresh"] = "%s.tmp.%d" % (base, gone.pid + 100000)
        for what, name in names.items():
            path = os.path.join(os.path.dirname(self.state), name)
            with open(path, "wb") as f:
                f.write(b'{"kvs":[')
            if what != "gone, but fresh":   # untouched for 2 minutes: no write in progress
                os.utime(path, (time.time() - 120, time.time() - 120))
        lbd = self.lbd().start()
        self.addCleanup(lbd.stop, None)
        self.wait_state_keys([backend_key(PREFIX, POOL, "b1")], "the state file")
        left = sorted(os.listdir(os.path.dirname(self.state)))
        figure("left in the state directory", left)
        self.assertNotIn(names["gone"], left)
        for what in ("live", "not a pid", "another file's", "gone, but fresh"):
            self.assertIn(names[what], left, what)
        self.assertEqual([n for n in left if n.startswith(base + ".tmp.%d" % lbd.proc.pid)], [],
                         "lbd's own temporary file is renamed over the state file")
        line = [ln for ln in lbd.log_text().splitlines() if "left half-written" in ln]
        self.assertEqual(len(line), 1, lbd.log_text())
        self.assertIn(names["gone"], line[0])
        lbd.stop(expect_rc=0)

    def test_3d_an_upgrade_hands_the_file_over(self):
        """From the new lbd's `upgrade: ready` on, the state file is the new
        lbd's alone: the old one, lingering for the sessions it keeps (another
        session version here: listeners only), writes nothing more, not even
        at its exit, so it cannot put back a view older than the new one's."""
        b1 = Backend(self.h, "b1")
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr))
        sock = self.h.path("state", "up.sock")
        args = ["--state-file", self.state, "--shutdown-grace", "30s"]
        old = UpgradeLbd(self.h, self.etcd.url, PREFIX, [POOL], sock_path=sock, extra_args=args,
                         name="lbd-old").start()
        self.addCleanup(old.stop, None)
        self.wait_state_keys([backend_key(PREFIX, POOL, "b1")], "the old lbd's state file")
        held = socket.create_connection(("127.0.0.1", old.pool_port(POOL)), timeout=5)
        self.addCleanup(held.close)
        held.sendall(b"x")   # a session of the old lbd, kept there by the new one's version
        new = UpgradeLbd(self.h, self.etcd.url, PREFIX, [POOL], sock_path=sock, like=old,
                         extra_args=args, env={"LBD_TEST_HANDOVER_VERSION": "99"},
                         name="lbd-new").spawn()
        self.addCleanup(new.stop, None)
        wait_until(lambda: "upgrade: ready" in new.log_text(), scaled(15), "the new lbd ready")
        # A change after the hand-over: the new lbd writes it down.
        self.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(b1.addr, 77))
        wait_until(lambda: '"weight": 77' in (read_state(self.state)[0] or {}).get(
            backend_key(PREFIX, POOL, "b1"), ""), scaled(10), "the new lbd's write")
        _, meta = read_state(self.state)
        written = meta["written_ms"]
        held.close()   # the old lbd's last session ends: it exits
        self.assertEqual(old.proc.wait(scaled(20)), 0, old.proc.log_tail(30))
        _, meta_after = read_state(self.state)
        figure("upgrade: state file written_ms before and after the old lbd exited",
               "%s %s" % (written, meta_after["written_ms"]))
        self.assertEqual(meta_after["written_ms"], written, "the old lbd wrote the state file "
                         "after the new one was ready")
        old_writes = [ln for ln in old.log_text().splitlines() if "state file written" in ln]
        self.assertLessEqual(len(old_writes), 1, old_writes)
        new.stop(expect_rc=0)

    def test_4_paths_that_cannot_work_are_refused(self):
        missing = self.h.path("no-such-dir", "lbd.state")
        fifo = self.h.path("state", "fifo")
        os.mkfifo(fifo)
        link = self.h.path("state", "link.state")
        os.symlink(self.state, link)   # to a file not written yet: renamed over, it would go
        for name, path, expect in [
            ("missing directory", missing, "does not exist"),
            ("a directory", os.path.dirname(self.state), "not a regular file"),
            ("a trailing slash", self.state + "/", "not a directory"),
            ("a FIFO", fifo, "not a regular file"),
            ("a symbolic link", link, "symbolic link"),
            ("a name too long for NAME.tmp.PID", self.h.path("state", "s" * 250), "too long"),
        ]:
            for check in (True, False):
                with self.subTest(name, check=check):
                    argv = self.lbd(state=path).argv() + (["--check"] if check else [])
                    rc, out, err = run(argv, timeout=scaled(15))
                    lines = err.strip().splitlines()
                    figure("--state-file %s%s" % (name, " --check" if check else ""), lines)
                    self.assertEqual(rc, 2, out + err)
                    self.assertTrue(any(expect in ln for ln in lines), err)
        # Empty (LBD_STATE_FILE= over a unit's default): no state file at all.
        rc, out, err = run(self.lbd(state="").argv() + ["--check"], timeout=scaled(15))
        self.assertEqual(rc, 0, out + err)
        self.assertNotIn("state file", out + err)


if __name__ == "__main__":
    lbtest.main()
