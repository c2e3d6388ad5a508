#!/usr/bin/python3
"""lbd under systemd's notify protocol (Type=notify, NotifyAccess=all),
with the test as the service manager: an AF_UNIX datagram socket in the
test's temp dir, named by $NOTIFY_SOCKET, with SO_PASSCRED so every message
carries the sender's PID.

  1. readiness: lbd started while etcd is not up yet says nothing while
     /readyz is 503; READY=1 (with STATUS=) comes from lbd's own PID once
     etcd is there, and /readyz answers 200 at that moment; SIGTERM sends
     STOPPING=1 and lbd exits 0;
  2. a $NOTIFY_SOCKET nobody listens on costs nothing: lbd becomes ready,
     serves and exits 0, with at most one warning line;
  3. reload as upgrade (lbd --upgrade-socket): SIGUSR2 makes the old
     process send RELOADING=1 (with MONOTONIC_USEC=) and log new_pid=N;
     process N sends MAINPID=N and READY=1 while the old one still runs,
     the old one exits 0, and N lives on, serving the pool and the
     connection opened before the upgrade; SIGTERM to N sends STOPPING=1.

The upgraded process is not a child the harness knows: the test makes
itself a child subreaper, so N becomes its child when the old lbd exits,
and kills and reaps N by PID whatever happens (also on ctest's SIGTERM).
"""

import atexit
import os
import re
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd, ask, backend_key,  # noqa: E402
                    backend_value, echo, open_conn, proc_state, scaled, set_subreaper,
                    wait_until)

PREFIX = "/lbtest-sdnotify/"
POOL = "web"
NOTIFY_MAX = 4096  # systemd reads at most this much of one datagram


class NotifySocket:
    """The service manager's end: receives sd_notify() datagrams in a thread.

    messages: [(received monotonic time, sender pid, {field: value}, notes)]
    where notes is what on_message(pid, fields) returned for that message
    (called in the receiving thread, at once: to look at the world at the
    moment a notification arrives).
    """

    def __init__(self, path, on_message=None):
        self.path = path
        self.on_message = on_message
        self.messages = []
        self.errors = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)
        self._thread.start()

    def _run(self):
        cred_space = socket.CMSG_SPACE(struct.calcsize("iII"))
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(NOTIFY_MAX, cred_space + 256)
            except socket.timeout:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    self.errors.append(exc)
                return
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:struct.calcsize("iII")])[0]
            fields = {}
            for line in data.decode("utf-8", "replace").split("\n"):
                if line:
                    k, _, v = line.partition("=")
                    fields[k] = v
            notes = None
            if self.on_message is not None:
                try:
                    notes = self.on_message(pid, fields)
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    notes = exc
            with self._lock:
                self.messages.append((time.monotonic(), pid, fields, notes))

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def mark(self):
        """An index: find()/wait_for() with since=mark() only see later messages."""
        with self._lock:
            return len(self.messages)

    def find(self, field, value=None, pid=None, since=0):
        """The index of the first message (from `since`) with field (=value),
        sent by pid when given; None when there is none yet."""
        msgs = self.snapshot()
        for i in range(since, len(msgs)):
            _, sender, fields, _ = msgs[i]
            if field in fields and (value is None or fields[field] == value) and \
                    (pid is None or sender == pid):
                return i
        return None

    def wait_for(self, field, value=None, pid=None, since=0, timeout=10.0, alive=None):
        """Waits for find(...) to find a message; returns its index.  alive()
        is called on every round and may raise to fail at once (lbd died)."""
        what = "%s%s from %s" % (field, "" if value is None else "=" + value,
                                 "pid %s" % pid if pid else "any pid")
        return wait_or_fail(lambda: self.find(field, value, pid, since), timeout,
                            "%s on $NOTIFY_SOCKET" % what, alive,
                            lambda: "received: %s" % (self.describe(since),))

    def describe(self, since=0):
        return ["pid %s: %s" % (pid, fields) for _, pid, fields, _ in self.snapshot()[since:]] \
            or "nothing"

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def wait_or_fail(predicate, timeout, what, alive=None, detail=None):
    """Polls predicate() until it returns something other than None or
    False; returns that.  Unlike wait_until(), an exception from alive() or
    predicate() fails at once: a process that died will not come back.
    detail() adds to the message when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s%s"
                                 % (timeout, what, "; " + detail() if detail else ""))
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# The upgraded lbd: a process the harness did not start.


def is_running(pid):
    return proc_state(pid) not in (None, "Z", "X")


def proc_exe_is(pid, binary):
    try:
        return os.path.realpath("/proc/%d/exe" % pid) == os.path.realpath(binary)
    except OSError:
        return False


def try_reap(pid):
    """Reaps pid if it is our child (we are a subreaper); True when it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass  # not ours (its parent, the old lbd, still runs): watch /proc
    return proc_state(pid) is None


class StrayLbd:
    """An lbd process known by PID only, stopped by PID: SIGTERM, a
    deadline, SIGKILL, reaped.  Only signals it while /proc/PID/exe is still
    lbd, so a recycled PID is never hit."""

    _all = []

    def __init__(self, pid, binary):
        self.pid = pid
        self.binary = binary
        self.returncode = None
        StrayLbd._all.append(self)

    def alive(self):
        return is_running(self.pid) and proc_exe_is(self.pid, self.binary)

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        """The exit status (waitpid's, when we reaped it) or True; None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    return self.returncode
            except ChildProcessError:
                if not is_running(self.pid):
                    return True
            time.sleep(0.02)
        return None

    def stop(self, timeout=10.0):
        if not self.alive():
            try_reap(self.pid)
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self.wait_exit(timeout) is None and self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.wait_exit(5.0)

    @classmethod
    def stop_all(cls):
        for s in list(cls._all):
            try:
                s.stop(timeout=5.0)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


atexit.register(StrayLbd.stop_all)

# ctest ends a test that ran out of time with SIGTERM; lbtest's handler stops
# what it started, then dies of the signal (no atexit).  Stop ours first.
_previous_sigterm = signal.getsignal(signal.SIGTERM)


def _on_sigterm(signum, frame):
    StrayLbd.stop_all()
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


def become_subreaper():
    if not set_subreaper():
        raise OSError("prctl(PR_SET_CHILD_SUBREAPER) failed")


def running(lbd):
    """An alive= check: fails at once, with its log, when lbd has exited."""
    def check():
        if not lbd.proc.alive():
            raise AssertionError("lbd exited with %s:\n%s"
                                 % (lbd.proc.returncode, lbd.proc.log_tail(40)))
    return check


def lbd_has_flag(flag):
    rc, out, err = lbtest.run([lbtest.lbd_binary(), "--help"], timeout=10)
    return rc == 0 and flag in out + err


# ---------------------------------------------------------------------------


class SystemdNotify(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def notify_socket(self, on_message=None):
        path = self.h.path("notify.sock")
        self.assertLess(len(path.encode()), 108, "AF_UNIX path too long: %s" % path)
        ns = NotifySocket(path, on_message)
        self.addCleanup(ns.stop)
        return ns

    def backend_in_etcd(self, etcd):
        b = Backend(self.h, "b1")
        etcd.put(backend_key(PREFIX, POOL, b.id), backend_value(b.addr))
        return b

    def test_1_ready_after_first_sync_and_stopping_on_sigterm(self):
        state = {"lbd": None}

        def at_arrival(pid, fields):
            # The moment READY=1 arrives: is lbd ready by its own account?
            if fields.get("READY") == "1" and state["lbd"] is not None:
                return state["lbd"].http_get("/readyz", timeout=2.0)[0]
            return None

        ns = self.notify_socket(at_arrival)
        etcd = Etcd(self.h)  # its port, not started yet: lbd cannot sync
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL], extra_args=["--shutdown-grace", "1s"],
                  env={"NOTIFY_SOCKET": ns.path})
        state["lbd"] = lbd
        lbd.start(wait_ready=False)
        self.assertEqual(lbd.http_get("/readyz")[0], 503, "ready without etcd?")
        self.assertIsNone(ns.find("READY"), "READY=1 before the first etcd sync: %s"
                          % ns.describe())

        etcd.start()
        b1 = self.backend_in_etcd(etcd)
        i = ns.wait_for("READY", "1", timeout=scaled(30), alive=running(lbd))
        _, pid, fields, readyz = ns.snapshot()[i]
        self.assertEqual(pid, lbd.proc.pid, "READY=1 from another process")
        self.assertEqual(readyz, 200, "/readyz when READY=1 arrived")
        self.assertEqual(fields.get("STATUS"), "serving")
        wait_until(lambda: ask(lbd.pool_port(POOL)) == b1.id, scaled(10), "b1 served")
        self.assertEqual(len([m for m in ns.snapshot() if m[2].get("READY") == "1"]), 1,
                         "READY=1 more than once: %s" % ns.describe())

        mark = ns.mark()
        lbd.stop(expect_rc=0)
        ns.wait_for("STOPPING", "1", pid=lbd.proc.pid, since=mark, timeout=2.0)
        self.assertIsNone(ns.find("READY", since=mark), "READY=1 while stopping")

    def test_2_nobody_on_the_notify_socket(self):
        etcd = Etcd(self.h).start()
        b1 = self.backend_in_etcd(etcd)
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL], extra_args=["--shutdown-grace", "1s"],
                  env={"NOTIFY_SOCKET": self.h.path("nobody-listens.sock")}).start()
        wait_until(lambda: ask(lbd.pool_port(POOL)) == b1.id, scaled(10), "b1 served")
        lbd.stop(expect_rc=0)
        warnings = [line for line in lbd.log_text().splitlines()
                    if "level=warn" in line and "sub=systemd" in line]
        self.assertLessEqual(len(warnings), 1, "\n".join(warnings))

    def test_3_reload_upgrades_and_systemd_follows_the_new_pid(self):
        if not lbd_has_flag("--upgrade-socket"):
            self.fail("lbd --help names no --upgrade-socket: the upgrade has not landed")
        become_subreaper()
        binary = lbtest.lbd_binary()
        state = {"old": None}

        def at_arrival(pid, fields):
            # MAINPID= must reach the manager while the old main process
            # still runs: systemd would otherwise take the old one's exit
            # for the service's and stop the unit, new process and all.
            if "MAINPID" in fields and state["old"] is not None:
                return is_running(state["old"])
            return None

        ns = self.notify_socket(at_arrival)
        etcd = Etcd(self.h).start()
        b1 = self.backend_in_etcd(etcd)
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "1s",
                              "--upgrade-socket", self.h.path("upgrade.sock")],
                  env={"NOTIFY_SOCKET": ns.path}).start()
        old = lbd.proc.pid
        state["old"] = old
        ns.wait_for("READY", "1", pid=old, timeout=scaled(10), alive=running(lbd))
        conn, bid = open_conn(lbd.pool_port(POOL))
        self.addCleanup(conn.close)
        self.assertEqual(bid, b1.id)

        mark = ns.mark()
        log_mark = len(lbd.log_text())
        t_usr2 = time.monotonic()
        lbd.proc.send_signal(signal.SIGUSR2)

        def old_alive():
            if not lbd.proc.alive() and ns.find("MAINPID", since=mark) is None:
                raise AssertionError("old lbd exited with %s before any MAINPID=:\n%s"
                                     % (lbd.proc.returncode, lbd.proc.log_tail(40)))

        i = ns.wait_for("RELOADING", "1", pid=old, since=mark, timeout=scaled(10),
                        alive=old_alive)
        fields = ns.snapshot()[i][2]
        # systemd >= 253 matches reloads by this; 252 ignores it.  Same clock.
        self.assertRegex(fields.get("MONOTONIC_USEC", ""), r"^\d+$")
        self.assertLess(abs(int(fields["MONOTONIC_USEC"]) / 1e6 - t_usr2), 10.0)

        def new_pid_logged():
            old_alive()
            m = re.search(r"\bnew_pid=(\d+)\b", lbd.log_text()[log_mark:])
            return int(m.group(1)) if m else None

        new = wait_or_fail(new_pid_logged, scaled(15), "a new_pid=N line from the old lbd",
                           detail=lambda: "notifications: %s" % (ns.describe(mark),))
        stray = StrayLbd(new, binary)
        self.addCleanup(stray.stop)  # runs before the harness stops the old one
        self.assertNotEqual(new, old)

        i_main = ns.wait_for("MAINPID", str(new), pid=new, since=mark, timeout=scaled(15),
                             alive=old_alive)
        i_ready = ns.wait_for("READY", "1", pid=new, since=mark, timeout=scaled(15))
        self.assertLessEqual(i_main, i_ready, "READY=1 before MAINPID=: %s" % ns.describe(mark))
        self.assertIs(ns.snapshot()[i_main][3], True,
                      "MAINPID= arrived after the old lbd had exited")
        self.assertIsNone(ns.find("MAINPID", pid=old, since=mark),
                          "the old lbd sent MAINPID=: %s" % ns.describe(mark))

        rc = lbd.proc.wait(scaled(20))
        self.assertEqual(rc, 0, "old lbd after the upgrade:\n%s" % lbd.proc.log_tail(40))
        self.assertTrue(stray.alive(), "the new lbd %d died with the old one:\n%s"
                        % (new, lbd.proc.log_tail(40)))
        self.assertTrue(proc_exe_is(new, binary))
        wait_until(lambda: lbd.http_get("/readyz")[0] == 200, scaled(5),
                   "/readyz 200 from the new lbd")
        self.assertEqual(echo(conn, b"after the upgrade\n"), b"after the upgrade\n",
                         "the connection opened before the upgrade")
        self.assertEqual(ask(lbd.pool_port(POOL)), b1.id)
        self.assertTrue(stray.alive())

        mark = ns.mark()
        stray.signal(signal.SIGTERM)
        ns.wait_for("STOPPING", "1", pid=new, since=mark, timeout=scaled(5))
        rc = stray.wait_exit(scaled(20))
        self.assertIsNotNone(rc, "the new lbd did not exit within the deadline after SIGTERM")
        if rc is not True:
            self.assertEqual(rc, 0, "the new lbd's exit code")


if __name__ == "__main__":
    lbtest.main()
