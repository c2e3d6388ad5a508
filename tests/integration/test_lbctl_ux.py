#!/usr/bin/python3
"""lbctl as an operator meets it: progress while it waits, the truth when it
gives up, a watch that starts from the current state, one `state` word per
backend, and shell completion made from lbctl's own tables.

  - `drain --wait` without a terminal: a line per change of the active
    count (3, 2, 1, 0 as three connections close one by one), then success;
    on a terminal (a pty): one line rewritten with \\r; at its timeout: exit 1
    and a line saying the drain stays in effect, with the command that
    lifts it (which works);
  - `watch`: the backends as they are, then exactly one event per drain,
    undrain, weight change, health transition and removal, carrying the
    new state and saying what changed;
  - `-o json backends`: a `state` field ("up", "draining", "drained",
    "down"), no `drained`; the table has a STATE column;
  - `completion bash`: commands, flags per command, flag values, and pool
    and backend names asked of the lbd the command line names (quietly
    nothing when it does not answer); `completion zsh` when zsh is there.
"""

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, backend_key, open_conn,  # noqa: E402
                    scaled, wait_until)

PREFIX = "/lbtest-ux/"
FAST_CHECKS = {"health": {"type": "tcp", "interval": "200ms", "timeout": "150ms",
                          "rise": 1, "fall": 2}}


def config_key(pool):
    return "%spools/%s/config" % (PREFIX, pool)


class LbctlUx(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        # web: b1, b2 (watch); solo: s1 alone (every connection lands there);
        # hc: h1 with fast checks (health transitions)
        cls.servers = {i: Backend(h, i) for i in ("b1", "b2", "s1", "h1")}
        cls.pool_of = {"b1": "web", "b2": "web", "s1": "solo", "h1": "hc"}
        cls.etcd.put(config_key("hc"), json.dumps(FAST_CHECKS))
        for i, pool in cls.pool_of.items():
            cls.etcd.put(backend_key(PREFIX, pool, i),
                         json.dumps({"addr": cls.servers[i].addr, "weight": 100}))
        # big: filled by test_9 only
        cls.etcd.put(config_key("big"), json.dumps({"health": {"type": "none"}}))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, ["web", "solo", "hc", "big"]).start()
        wait_until(lambda: set(cls.lbd.backends()) == set(cls.pool_of), scaled(10),
                   "lbctl backends to list %s" % sorted(cls.pool_of))

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    # -- helpers ---------------------------------------------------------

    def ctl(self, *args, **kw):
        return lbtest.lbctl(*args, admin=self.lbd.admin, **kw)

    def state(self, pool, backend_id):
        return self.lbd.backends(pool)[backend_id]["state"]

    def hold(self, n):
        """n open connections through solo (all on s1)."""
        conns = []
        for _ in range(n):
            s, bid = open_conn(self.lbd.pool_port("solo"))
            self.addCleanup(s.close)
            self.assertEqual(bid, "s1")
            conns.append(s)
        wait_until(lambda: self.lbd.backends("solo")["s1"]["active_connections"] == n,
                   scaled(5), "s1 to count %d active connections" % n)
        return conns

    def undrain_solo(self):
        rc, out, err = self.ctl("undrain", "solo", "s1")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.state("solo", "s1"), "up")

    def watch(self, name, *args):
        """`lbctl [-o json] watch ...` in the background; its log holds what it printed."""
        argv = [lbtest.lbctl_binary(), "--admin", self.lbd.admin] + list(args)
        proc = self.h.spawn(name, argv)
        self.addCleanup(proc.stop, 5)
        return proc

    @staticmethod
    def json_events(proc):
        events = []
        for line in proc.log_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # the log's header line
            if isinstance(e, dict):
                events.append(e)
        return events

    # -- drain --wait ----------------------------------------------------

    def test_1_drain_wait_shows_the_count_fall_line_by_line(self):
        conns = self.hold(3)
        drain = self.h.spawn("drain-wait", [lbtest.lbctl_binary(), "--admin", self.lbd.admin,
                                            "drain", "solo", "s1", "--wait", "--timeout", "30s"])
        self.addCleanup(drain.stop, 5)
        line_re = re.compile(r"^s1: (\d+) active connections? \(waited \d+s of 30s\)$", re.M)

        def counts():
            return [int(c) for c in line_re.findall(drain.log_text())]

        for n in (3, 2, 1):
            wait_until(lambda: n in counts(), scaled(5), "a progress line with %d" % n)
            conns.pop().close()
        self.assertEqual(drain.wait(scaled(10)), 0, drain.log_text())
        text = drain.log_text()
        self.assertEqual(counts(), [3, 2, 1, 0], text)
        self.assertRegex(text, r"(?m)^s1 drained after \d+\.\ds: no active connections left$")
        self.assertNotIn("\r", text, "no terminal: plain lines")
        table = [ln.split() for ln in text.splitlines() if ln.startswith("solo ")]
        self.assertEqual(len(table), 1, text)
        self.assertIn("drained", table[0], text)
        self.assertEqual(self.state("solo", "s1"), "drained")
        self.undrain_solo()

    def test_2_drain_wait_on_a_terminal_rewrites_one_line(self):
        conns = self.hold(2)
        master, slave = pty.openpty()
        argv = [lbtest.lbctl_binary(), "--admin", self.lbd.admin, "drain", "solo", "s1",
                "--wait", "--timeout", "30s"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=slave, close_fds=True)
        os.close(slave)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(os.close, master)
        seen = bytearray()

        def pump():
            while select.select([master], [], [], 0.05)[0]:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    return
                if not data:
                    return
                seen.extend(data)

        def shows(n):
            pump()
            return re.search(rb"s1: %d active connections? " % n, bytes(seen))

        for n in (2, 1):
            wait_until(lambda: shows(n), scaled(5), "the terminal line to show %d" % n)
            conns.pop().close()
        out, _ = proc.communicate(timeout=scaled(10))
        wait_until(lambda: shows(0) and b"drained after" in seen, scaled(5), "the last line")
        text = bytes(seen).decode()
        self.assertEqual(proc.returncode, 0, text)
        progress, _, rest = text.partition("drained after")
        self.assertNotIn("\n", progress, "progress stays on one line: %r" % text)
        self.assertGreaterEqual(progress.count("\r"), 3, "rewritten with \\r: %r" % text)
        self.assertTrue(rest.rstrip("\r\n").endswith("no active connections left"), text)
        self.assertIn(b"drained", out, "the backend on stdout: %r" % out)
        self.undrain_solo()

    def test_3_drain_wait_timeout_says_the_drain_stays(self):
        self.hold(1)
        t0 = time.monotonic()
        rc, out, err = self.ctl("drain", "solo", "s1", "--wait", "--timeout", "1s")
        took = time.monotonic() - t0
        self.assertEqual(rc, 1, "exit code at the timeout: %s %s" % (out, err))
        self.assertLess(took, 5.0, "gave up after %.1fs" % took)
        last = err.strip().splitlines()[-1]
        hint = "lbctl --admin %s undrain solo s1" % self.lbd.admin
        self.assertEqual(last, "lbctl: drain solo/s1: timed out after 1s with 1 connection still "
                               "open; s1 stays drained (undrain with: %s)" % hint)
        self.assertEqual(out, "", "nothing on stdout when it failed")
        listed = self.lbd.backends("solo")["s1"]
        self.assertEqual((listed["state"], listed["drain"]), ("draining", True), listed)
        # the command it gives works as given
        rc, out, err = lbtest.run([lbtest.lbctl_binary()] + hint.split()[1:])
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.state("solo", "s1"), "up")

    # -- watch -----------------------------------------------------------

    def test_4_watch_starts_with_the_state_then_one_event_per_change(self):
        jw = self.watch("watch-json", "-o", "json", "watch", "web")
        tw = self.watch("watch-table", "watch", "web")
        wait_until(lambda: any(e["type"] == "synced" for e in self.json_events(jw)), scaled(5),
                   "the JSON watch to send the current state")
        initial = self.json_events(jw)
        self.assertEqual([(e["type"], e["id"]) for e in initial],
                         [("current", "b1"), ("current", "b2"), ("synced", None)], initial)
        for e in initial[:2]:
            self.assertEqual(e["backend"]["state"], "up", e)
        wait_until(lambda: len(tw.log_text().splitlines()) >= 4, scaled(5),
                   "the table watch to print the current state")
        lines = tw.log_text().splitlines()[1:]  # after the log's own header line
        self.assertEqual(lines[0].split(),
                         ["TIME", "EVENT", "BACKEND", "STATE", "ADDR", "EFF", "ACTIVE", "DETAIL"])
        self.assertEqual([ln.split()[1:4] for ln in lines[1:3]],
                         [["current", "web/b1", "up"], ["current", "web/b2", "up"]], lines)

        def changes():  # health checks report on their own schedule
            return [e for e in self.json_events(jw)
                    if e["type"] not in ("current", "synced", "health_changed")]

        def remove_b2():
            self.etcd.delete(backend_key(PREFIX, "web", "b2"))
            return 0

        steps = [
            (lambda: self.ctl("drain", "web", "b1")[0], "b1", "drained", "drained",
             "drained by operator (cluster override)"),
            (lambda: self.ctl("undrain", "web", "b1")[0], "b1", "backend_changed", "up",
             "undrained by operator (cluster override)"),
            (lambda: self.ctl("weight", "web", "b1", "50")[0], "b1", "backend_changed", "up",
             "weight 100 -> 50 by operator (cluster override)"),
            (lambda: self.ctl("weight", "web", "b1", "--clear")[0], "b1", "backend_changed", "up",
             "weight 50 -> 100 by operator (cluster override)"),
            (lambda: self.ctl("drain", "web", "b1", "--local")[0], "b1", "drained", "drained",
             "drained by operator (local override, this lbd only)"),
            (lambda: self.ctl("undrain", "web", "b1", "--local")[0], "b1", "backend_changed",
             "up", "undrained by operator (local override, this lbd only)"),
            (remove_b2, "b2", "backend_removed", "removed",
             "removed: key deleted or lease expired"),
        ]
        for n, (act, bid, typ, state, detail) in enumerate(steps, 1):
            self.assertEqual(act(), 0, "step %d: %s" % (n, detail))
            wait_until(lambda: len(changes()) >= n, scaled(5), "an event for %r" % detail)
            time.sleep(0.5)  # a second event (etcd echoing a CLUSTER write) would be here
            got = changes()
            self.assertEqual(len(got), n, "exactly one event for %r: %r" % (detail, got[n - 1:]))
            self.assertEqual((got[-1]["type"], got[-1]["id"], got[-1]["backend"]["state"],
                              got[-1]["detail"]), (typ, bid, state, detail))
        # the table shows the same events, one line each, in the columns of its header
        wait_until(lambda: all(step[-1] in tw.log_text() for step in steps), scaled(5),
                   "the table watch to show every change")
        rows = [ln for ln in tw.log_text().splitlines()[4:] if " health " not in ln]
        self.assertEqual(len(rows), len(steps), "\n".join(rows))
        for row, (_, _, _, state, detail) in zip(rows, steps):
            self.assertEqual(row.split()[3], state, row)
            self.assertTrue(row.endswith(detail), row)
        # b2 back, for the tests after this one
        self.etcd.put(backend_key(PREFIX, "web", "b2"),
                      json.dumps({"addr": self.servers["b2"].addr, "weight": 100}))
        wait_until(lambda: "b2" in self.lbd.backends("web"), scaled(5), "b2 back")

    def test_5_watch_tells_health_transitions_once_with_their_reason(self):
        jw = self.watch("watch-hc", "-o", "json", "watch", "hc")
        wait_until(lambda: any(e["type"] == "synced" for e in self.json_events(jw)), scaled(5),
                   "the current state")
        wait_until(lambda: self.lbd.backends("hc")["h1"]["health"] == "up", scaled(5), "h1 up")
        before = len(self.json_events(jw))
        h1 = self.servers["h1"]
        h1.kill()
        wait_until(lambda: self.state("hc", "h1") == "down", scaled(5), "h1 down")
        h1.restart()
        wait_until(lambda: self.state("hc", "h1") in ("up", "slow_start"), scaled(5), "h1 up")
        time.sleep(1.0)  # more checks pass: no more events
        health = [e for e in self.json_events(jw)[before:]]
        self.assertEqual([(e["type"], e["backend"]["state"]) for e in health],
                         [("health_changed", "down"), ("health_changed", "up")], health)
        self.assertRegex(health[0]["detail"],
                         r"^health down: 2 failed checks \(Connection refused\)$")
        self.assertRegex(health[1]["detail"], r"^health up: 1 passed check \(connect succeeded\)$")

    def test_9_watch_of_more_backends_than_a_stream_holds_shows_changes(self):
        # 6,000 backends with 100-character ids: about 1.3 MB of current
        # state, more than the 1 MiB an event stream may queue.
        ids = ["big-%s-%05d" % ("x" * 90, i) for i in range(6000)]
        self.etcd.put_many({backend_key(PREFIX, "big", i): json.dumps(
            {"addr": "10.99.%d.%d:80" % (n // 250, n % 250 + 1), "weight": 100})
            for n, i in enumerate(ids)})
        wait_until(lambda: self.lbd.metric("lbd_pool_backends", pool="big") == len(ids),
                   scaled(30), "lbd to list 6,000 backends in big")
        tw = self.watch("watch-big", "watch", "big")
        wait_until(lambda: "showing changes only" in tw.log_text(), scaled(10),
                   "lbctl watch to fall back to changes only")
        self.assertIn("the current state of big is more than an event stream may queue",
                      tw.log_text())
        # lbctl subscribed again, for changes only: the first stream ended
        wait_until(lambda: self.lbd.metric("lbd_event_subscribers") == 1, scaled(5),
                   "lbctl watch's second stream")
        rc, out, err = self.ctl("weight", "big", ids[7], "7")
        self.assertEqual(rc, 0, err)
        wait_until(lambda: "weight 100 -> 7" in tw.log_text(), scaled(5),
                   "the change after the fallback")
        self.assertTrue(tw.alive())
        # lbd restarts at the same address: lbctl reconnects, for changes only still
        self.lbd.stop(expect_rc=0)
        self.lbd.start()
        wait_until(lambda: self.lbd.metric("lbd_event_subscribers") == 1, scaled(15),
                   "lbctl watch to subscribe to the restarted lbd")
        rc, out, err = self.ctl("weight", "big", ids[7], "8")
        self.assertEqual(rc, 0, err)
        wait_until(lambda: "weight 7 -> 8" in tw.log_text(), scaled(5),
                   "the change after the reconnection")
        self.assertIn("lbctl: watch: reconnected; the changes from now on", tw.log_text())
        self.assertNotIn("the current state again", tw.log_text())
        self.assertTrue(tw.alive())
        tw.stop(5)
        self.etcd.delete_prefix("%spools/big/" % PREFIX)
        self.etcd.put(config_key("big"), json.dumps({"health": {"type": "none"}}))

    # -- JSON and table --------------------------------------------------

    def test_6_one_state_field_and_a_state_column(self):
        listed = self.lbd.backends()
        for i, b in listed.items():
            self.assertIn(b["state"], ("up", "slow_start"), b)
            self.assertNotIn("drained", b, "one field for the state: %r" % b)
            self.assertIs(b["drain"], False, b)
        conns = self.hold(1)
        rc, out, err = self.ctl("drain", "solo", "s1", "--local")
        self.assertEqual(rc, 0, err)
        b = self.lbd.backends("solo")["s1"]
        self.assertEqual((b["state"], b["drain"], b["active_connections"]), ("draining", True, 1))
        rc, out, err = self.ctl("backends", "solo")
        header, row = out.splitlines()[0].split(), out.splitlines()[1].split()
        self.assertEqual(header[:4], ["POOL", "ID", "ADDR", "STATE"], out)
        self.assertEqual(row[3], "draining", out)
        conns.pop().close()
        wait_until(lambda: self.state("solo", "s1") == "drained", scaled(5), "s1 drained")
        rc, out, err = self.ctl("health", "web", "b1", "down")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.state("web", "b1"), "down")
        rc, out, err = self.ctl("-o", "json", "health", "web", "b1", "auto")
        self.assertEqual(json.loads(out)["state"], "up", out)
        rc, out, err = self.ctl("undrain", "solo", "s1", "--local")
        self.assertEqual(rc, 0, err)

    # -- completion ------------------------------------------------------

    def complete(self, words, shell_env=None, script=None):
        """COMPREPLY for COMP_WORDS=words (the last one is completed), as bash has it."""
        env = {"PATH": os.path.dirname(lbtest.lbctl_binary()) + os.pathsep + os.environ["PATH"],
               "LBCTL_ADMIN": self.lbd.admin}
        env.update(shell_env or {})
        quoted = " ".join("'%s'" % w for w in words)
        prog = ('source <(lbctl completion bash) || exit 9; COMP_WORDS=(%s); COMP_CWORD=%d; '
                '_lbctl; printf "%%s\\n" "${COMPREPLY[@]}"' % (quoted, len(words) - 1))
        t0 = time.monotonic()
        rc, out, err = lbtest.run(["bash", "-c", prog], env=env, timeout=30)
        self.assertEqual((rc, err), (0, ""), "no noise from completion of %r" % (words,))
        return sorted(w for w in out.splitlines() if w), time.monotonic() - t0

    def test_7_bash_completion(self):
        rc, usage, _ = lbtest.run([lbtest.lbctl_binary(), "--help"])
        commands = re.findall(r"(?m)^  ([a-z][a-z-]*)\s", usage.split("Commands:")[1].split(
            "\n\n")[0])
        self.assertIn("drain", commands)
        got, _ = self.complete(["lbctl", ""])
        self.assertEqual(got, sorted(commands + ["help"]), "every command of lbctl --help")
        self.assertEqual(self.complete(["lbctl", "dr"])[0], ["drain"])
        self.assertEqual(self.complete(["lbctl", "help", "und"])[0], ["undrain"])

        # flags per command, from the same rows as `lbctl drain --help`
        rc, help_text, _ = lbtest.run([lbtest.lbctl_binary(), "drain", "--help"])
        flags, _ = self.complete(["lbctl", "drain", "--"])
        for flag in re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z-]+)", help_text):
            self.assertIn(flag, flags)
        self.assertIn("--admin", flags, "global flags follow the command too")
        self.assertNotIn("--wait", self.complete(["lbctl", "undrain", "--"])[0])
        self.assertIn("--check-interval", self.complete(["lbctl", "register", "--check-"])[0])
        self.assertEqual(self.complete(["lbctl", "-o", ""])[0], ["json", "table"])
        self.assertEqual(self.complete(["lbctl", "health", "web", "b1", ""])[0],
                         ["auto", "down", "up"])
        self.assertEqual(self.complete(["lbctl", "completion", ""])[0], ["bash", "zsh"])

        # names from lbd: LBCTL_ADMIN, or --admin on the line being completed
        self.assertEqual(self.complete(["lbctl", "drain", ""])[0],
                         ["big", "hc", "solo", "web"])
        self.assertEqual(self.complete(["lbctl", "drain", "web", ""])[0], ["b1", "b2"])
        self.assertEqual(self.complete(["lbctl", "weight", "--local", "solo", "s"])[0], ["s1"])
        self.assertEqual(self.complete(["lbctl", "backends", "w"])[0], ["web"])
        line_admin = ["lbctl", "--admin", self.lbd.admin, "undrain", "web", ""]
        self.assertEqual(self.complete(line_admin, {"LBCTL_ADMIN": "127.0.0.1:1"})[0],
                         ["b1", "b2"])

        # an lbd that does not answer: nothing, quietly, soon
        dead = "127.0.0.1:%d" % lbtest.free_port()
        got, took = self.complete(["lbctl", "drain", ""], {"LBCTL_ADMIN": dead})
        self.assertEqual(got, [])
        self.assertLess(took, 5.0)

        # COMP_LINE as bash gives it: an address with ':' stays one word
        env = {"PATH": os.path.dirname(lbtest.lbctl_binary()) + os.pathsep + os.environ["PATH"],
               "LBCTL_ADMIN": "127.0.0.1:1"}
        line = "lbctl --admin %s drain web b" % self.lbd.admin
        prog = ('source <(lbctl completion bash); COMP_LINE="%s"; COMP_POINT=${#COMP_LINE}; '
                'COMP_WORDS=(x); COMP_CWORD=0; _lbctl; echo "${COMPREPLY[@]}"' % line)
        rc, out, err = lbtest.run(["bash", "-c", prog], env=env)
        self.assertEqual(out.split(), ["b1", "b2"], err)

    def test_8_zsh_completion(self):
        rc, script, err = self.ctl("completion", "zsh")
        self.assertEqual(rc, 0, err)
        self.assertTrue(script.startswith("#compdef lbctl\n"), script[:100])
        self.assertIn("'drain:stop sending new connections to a backend'", script)
        self.assertIn("'--wait:return once the backend has no active connections left'", script)
        rc, out, err = self.ctl("completion", "fish")
        self.assertEqual(rc, 2, "an unknown shell is a usage error")
        self.assertIn("bash or zsh", err)
        zsh = os.environ.get("LBTEST_ZSH") or shutil.which("zsh")
        if not zsh:
            self.skipTest("zsh is not installed (Debian package zsh): script checked as text only")
        rc, out, err = lbtest.run([zsh, "-n", "-c", script])
        self.assertEqual(rc, 0, "zsh -n: %s" % err)

        # An interactive zsh on a pty, completing as a user would with TAB.
        home = self.h.path("zdotdir")
        os.makedirs(home, exist_ok=True)
        with open(os.path.join(home, ".zshrc"), "w") as f:
            f.write("[[ -n $LBTEST_ZSH_MODULE_PATH ]] && module_path=($LBTEST_ZSH_MODULE_PATH)\n"
                    "PS1='%% '\nautoload -U compinit && compinit -u -D\n"
                    "source <(lbctl completion zsh)\n")
        env = dict(os.environ, ZDOTDIR=home, TERM="dumb", LBCTL_ADMIN=self.lbd.admin,
                   PATH=os.path.dirname(lbtest.lbctl_binary()) + os.pathsep + os.environ["PATH"])
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execve(zsh, [zsh, "-i"], env)
            finally:
                os._exit(127)
        self.addCleanup(os.waitpid, pid, 0)
        self.addCleanup(os.kill, pid, 9)
        self.addCleanup(os.close, fd)
        seen = bytearray()

        def pump():
            while select.select([fd], [], [], 0.05)[0]:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    return
                if not data:
                    return
                seen.extend(data)

        def completes(typed, *expect):
            del seen[:]
            os.write(fd, b"\x15" + typed.encode() + b"\t")  # ^U: an empty line first

            def shown():
                pump()
                text = bytes(seen).decode("utf-8", "replace")
                return all(e in text for e in expect) and text
            return wait_until(shown, scaled(5), "zsh to complete %r with %r" % (typed, expect))

        completes("lbctl dr", "lbctl drain ")
        completes("lbctl drain --w", "lbctl drain --wait ")
        completes("lbctl health web b1 ", "auto", "down", "up")
        completes("lbctl drain ", "hc", "solo", "web")
        completes("lbctl undrain web b", "b1", "b2")
        completes("lbctl -o ", "json", "table")

if __name__ == "__main__":
    lbtest.main()
