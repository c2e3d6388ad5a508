"""Processes and waiting: the binaries under test, free loopback ports,
child processes tracked by PID with their output in log files, the Harness
that owns them, and wait_until(), the only way a test waits.

Every child dies with the test process (PR_SET_PDEATHSIG), and everything
still running is stopped at exit and on SIGTERM (how ctest ends a test that
ran out of time), so no etcd or lbd outlives its test.  So does a process
that is not the test's child but is tracked by PID (ForeignProc: an lbd
that another lbd started on SIGUSR2): it is SIGKILLed then.
"""

import atexit
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# tests/integration/lbtest/procs.py -> the repository root
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# Start-up deadlines stretch on slow builds (sanitizers) and busy machines.
TIMEOUT_SCALE = float(os.environ.get("LBTEST_TIMEOUT_SCALE", "1") or "1")


def scaled(seconds):
    return seconds * TIMEOUT_SCALE


# ---------------------------------------------------------------------------
# Binaries


def bin_dir():
    return os.environ.get("LB_BUILD_DIR") or os.path.join(REPO_ROOT, "build")


def _find_binary(name, subdir):
    base = bin_dir()
    for cand in (os.path.join(base, subdir, name), os.path.join(base, name)):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise AssertionError("%s not found under %s (looked in %s/ and ./); build it first "
                         "or pass --bin-dir" % (name, base, subdir))


def lbd_binary():
    return _find_binary("lbd", "balancer")


def lbctl_binary():
    return _find_binary("lbctl", "ctl")


# ---------------------------------------------------------------------------
# Waiting


class WaitTimeout(AssertionError):
    pass


def wait_until(predicate, timeout, what, interval=0.05):
    """Polls predicate() until it returns something truthy; returns that value.

    Exceptions raised by the predicate count as "not yet" (a port that does
    not answer yet, a key not written yet); the last one is reported if the
    deadline passes.  Fails with an AssertionError naming `what`.
    """
    deadline = time.monotonic() + timeout
    last_value, last_exc = None, None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_exc = None
        except Exception as exc:  # noqa: BLE001 - reported below
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = "last value %r" % (last_value,)
            if last_exc is not None:
                detail = "last error %s: %s" % (type(last_exc).__name__, last_exc)
            raise WaitTimeout("timed out after %.1fs waiting for %s (%s)" % (timeout, what, detail))
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Ports

_ports_lock = threading.Lock()
_ports_handed_out = set()


def reserve_port(port):
    """Notes a port this process listens on, so free_port() never hands it out."""
    with _ports_lock:
        _ports_handed_out.add(port)


def free_port():
    """A loopback TCP port that was free a moment ago.

    Bind to port 0, note the port, close.  A port is never handed out twice
    by this process; a race with another process on the machine is still
    possible, so the starters retry on "address already in use".
    """
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        with _ports_lock:
            if port in _ports_handed_out:
                continue
            _ports_handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port found")


def port_is_open(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def addr_in_use(text):
    """True when a process log says its bind failed on a taken port."""
    t = text.lower()
    return "address already in use" in t or "eaddrinuse" in t or "addrinuse" in t


# ---------------------------------------------------------------------------
# Processes

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - non-glibc
    _libc = None


def _child_setup():
    # A test runner killed by a timeout must not leave etcd or lbd behind.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# setpriv (util-linux) sets the parent-death signal and execs the command
# (same PID): no Python runs in the forked child, which beside grpcio's
# threads could hang before exec (and Popen with it).
_SETPRIV = shutil.which("setpriv")


def _spawn_args(argv):
    """(argv to run, preexec_fn) for a child killed when the test runner dies."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--"] + argv, None
    return argv, _child_setup


_all_procs = []
_all_procs_lock = threading.Lock()


class _Tracked:
    """What Proc and ForeignProc share: signals by PID, stop(), and the log
    file.  A subclass has pid, log_path, returncode, alive(), wait(timeout)
    (the exit code, None at the deadline) and _stopped()."""

    _WAIT_AFTER_SIGKILL = None   # stop() waits this long after a SIGKILL (None: no limit)

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    @contextlib.contextmanager
    def stopped(self):
        """Every thread stopped (SIGSTOP) inside the block, continued (SIGCONT) after it,
        whatever happens: a process stalled while its clients queue up."""
        self.send_signal(signal.SIGSTOP)
        try:
            yield self
        finally:
            self.send_signal(signal.SIGCONT)

    def stop(self, timeout=10.0, sig=signal.SIGTERM):
        """sig, wait up to `timeout`, then SIGKILL.

        Returns (exit code, killed) where killed tells whether SIGKILL was
        needed.  Exit codes follow Popen: -N for death by signal N (None:
        a ForeignProc that was not ours to reap).
        """
        killed = False
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait(timeout) is None and self.alive():
                killed = True
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait(self._WAIT_AFTER_SIGKILL)
        self._stopped()
        return self.returncode, killed

    def kill(self):
        return self.stop(timeout=0, sig=signal.SIGKILL)[0]

    def log_text(self):
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=80):
        return "\n".join(self.log_text().splitlines()[-lines:])


class Proc(_Tracked):
    """A child process with its output in a log file, tracked by PID."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(("### %s: %s\n" % (name, " ".join(self.argv))).encode())
        self._log.flush()
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        spawn_argv, preexec = _spawn_args(self.argv)
        self.popen = subprocess.Popen(spawn_argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                      preexec_fn=preexec)
        self.pid = self.popen.pid
        self.returncode = None
        with _all_procs_lock:
            _all_procs.append(self)

    def alive(self):
        return self.popen.poll() is None

    def wait(self, timeout):
        """Returns the exit code, or None if still running at the deadline."""
        try:
            self.returncode = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def _stopped(self):
        self.returncode = self.popen.returncode
        if not self._log.closed:
            self._log.close()


def _stop_all_procs():
    with _all_procs_lock:
        procs = list(_all_procs)
    for p in reversed(procs):
        try:
            p.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(_stop_all_procs)


# ---------------------------------------------------------------------------
# Processes that are not the test's children

_PR_SET_CHILD_SUBREAPER = 36
_foreign_pids = set()


def set_subreaper(on=True):
    """Makes this process the reaper of orphaned descendants (or no longer,
    with on=False): an lbd started by another lbd (SIGUSR2) becomes our child
    once its parent exits, so its exit code can be read.  True if it took."""
    if _libc is None:
        return False
    return _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0


def proc_state(pid):
    """The state letter of /proc/PID/stat, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class ForeignProc(_Tracked):
    """A process that is not the test's child (an lbd that another lbd
    started on SIGUSR2), tracked by PID; it may write to its parent's log
    (log_path).  While the test is a child subreaper (set_subreaper) it
    becomes the test's child once its parent exits: then it is reaped and
    its exit code known (returncode; None otherwise).  Until stopped or
    seen gone it is SIGKILLed at exit and on SIGTERM."""

    _WAIT_AFTER_SIGKILL = 5

    def __init__(self, pid, name=None, log_path=None, argv=None):
        self.pid = pid
        self.name = name or "pid %d" % pid
        self.log_path = log_path
        self.argv = argv
        self.returncode = None
        _foreign_pids.add(pid)

    def _reap(self):
        if self.returncode is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            _foreign_pids.discard(self.pid)
            return True
        return False

    def alive(self):
        if self._reap():
            return False
        state = proc_state(self.pid)
        if state is None:
            _foreign_pids.discard(self.pid)
        return state is not None and state not in ("Z", "X")

    def cmdline(self):
        """Its path and argv (/proc/PID/cmdline)."""
        with open("/proc/%d/cmdline" % self.pid, "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]

    def wait(self, timeout):
        """The exit code once it is gone (None when not ours to reap), or None
        if still running at the deadline."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        return self.returncode

    def _stopped(self):
        _foreign_pids.discard(self.pid)


def _kill_foreign_pids():
    for pid in list(_foreign_pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# Registered after _stop_all_procs, so it runs first.
atexit.register(_kill_foreign_pids)


def _on_sigterm(signum, frame):
    # ctest and CI stop tests with SIGTERM, and atexit handlers do not run
    # on death by signal: clean up (what lbd started too), then die of it.
    _kill_foreign_pids()
    _stop_all_procs()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


class Harness:
    """Owns a temp dir and everything one test (or test class) starts:
    processes (spawn) and in-process servers (servers, each with stop())."""

    def __init__(self, name="lbtest"):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="lbtest-%s-" % name)
        self.procs = []
        self.servers = []
        self._cleaned = False
        self._seq = 0

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def unique(self, stem):
        self._seq += 1
        return "%s-%d-%d" % (stem, os.getpid(), self._seq)

    def spawn(self, name, argv, env=None):
        log = self.path("%s.log" % name)
        p = Proc(name, argv, log, env=env)
        self.procs.append(p)
        return p

    def dump_logs(self, stream=None, lines=80):
        stream = stream or sys.stderr
        for p in self.procs:
            stream.write("\n----- %s (pid %d, %s) last %d lines of %s -----\n"
                         % (p.name, p.pid, "running" if p.alive() else "exit %s" % p.returncode,
                            lines, p.log_path))
            stream.write(p.log_tail(lines) + "\n")
        stream.flush()

    def cleanup(self):
        if self._cleaned:
            return
        self._cleaned = True
        errors = []
        for p in reversed(self.procs):
            try:
                p.stop(timeout=10)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        for s in reversed(self.servers):
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if os.environ.get("LBTEST_KEEP"):
            sys.stderr.write("lbtest: keeping %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise errors[0]


def raise_nofile(want=16384):
    """Raises this process's open-files soft limit to `want` (at most the
    hard limit): for tests that hold thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(argv, timeout=30, env=None, input_bytes=None, cwd=None):
    """Runs a command to completion; returns (rc, stdout, stderr) as text."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    # No preexec_fn: the command is bounded by `timeout` anyway, and running
    # Python in a child forked beside grpcio's threads can hang that child
    # before exec (and Popen with it, which no timeout covers); without one,
    # subprocess forks with vfork and runs no fork handlers.
    p = subprocess.run([str(a) for a in argv], input=input_bytes, capture_output=True,
                       timeout=timeout, env=full_env, cwd=cwd)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
