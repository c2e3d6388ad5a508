"""Harness for lbd's integration tests: real etcd, real backends, real binaries.

Every test starts what it needs on free 127.0.0.1 ports and stops it again,
by PID, even when it fails:

    h = Harness("e2e")                       # temp dir + process registry
    etcd = Etcd(h).start()                   # Debian's etcd, temp data dir
    b1 = Backend(h, "b1")                    # answers "b1\n", then echoes
    reg = Registrar(h, etcd, "/lbtest/", "web", "b1", b1.addr)
    lbd = Lbd(h, etcd.url, "/lbtest/", ["web"]).start()
    assert ask(lbd.pool_port("web")) == "b1"
    h.cleanup()                              # SIGTERM -> deadline -> SIGKILL

Waiting is always on a condition with a deadline (wait_until), never a
fixed sleep.  Start-up deadlines are multiplied by LBTEST_TIMEOUT_SCALE
(the sanitizer build sets it); behavioural deadlines a test asserts are not.

Binaries are found under --bin-dir, or $LB_BUILD_DIR, or build/ at the
repository root: <dir>/balancer/lbd and <dir>/ctl/lbctl.

Only the standard library and grpc (Debian's python3-grpcio, used by the
interop test) are needed: run the tests with /usr/bin/python3.
"""

import atexit
import base64
import collections
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def free_port():
    """A loopback TCP port that was free a moment ago.

    Bind to port 0, note the port, close.  A port is never handed out twice
    by this process; a race with another process on the machine is still
    possible, so the starters below retry on "address already in use".
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


def _addr_in_use(text):
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


_all_procs = []
_all_procs_lock = threading.Lock()


class Proc:
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
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                      preexec_fn=_child_setup)
        self.pid = self.popen.pid
        self.returncode = None
        with _all_procs_lock:
            _all_procs.append(self)

    def alive(self):
        return self.popen.poll() is None

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Returns the exit code, or None if still running at the deadline."""
        try:
            self.returncode = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=10.0, sig=signal.SIGTERM):
        """sig, wait up to `timeout`, then SIGKILL.

        Returns (exit code, killed) where killed tells whether SIGKILL was
        needed.  Exit codes follow Popen: -N for death by signal N.
        """
        killed = False
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait(timeout) is None:
                killed = True
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        self.returncode = self.popen.returncode
        self._close_log()
        return self.returncode, killed

    def kill(self):
        return self.stop(timeout=0, sig=signal.SIGKILL)[0]

    def _close_log(self):
        if not self._log.closed:
            self._log.close()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=80):
        return "\n".join(self.log_text().splitlines()[-lines:])


def _stop_all_procs():
    with _all_procs_lock:
        procs = list(_all_procs)
    for p in reversed(procs):
        try:
            p.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(_stop_all_procs)


def _on_sigterm(signum, frame):
    # ctest and CI stop tests with SIGTERM: clean up, then die of it.
    _stop_all_procs()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


class Harness:
    """Owns a temp dir and everything one test (or test class) starts."""

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


def run(argv, timeout=30, env=None, input_bytes=None):
    """Runs a command to completion; returns (rc, stdout, stderr) as text."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.run([str(a) for a in argv], input=input_bytes, capture_output=True,
                       timeout=timeout, env=full_env, preexec_fn=_child_setup)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# etcd


def _b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def _unb64(s):
    return base64.b64decode(s).decode("utf-8", "replace")


def prefix_range_end(prefix):
    """etcd's range_end for "every key starting with prefix"."""
    b = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def http_request(url, body=None, method=None, timeout=5.0, headers=None, context=None):
    """Returns (status, body bytes); HTTP errors are returned, not raised.

    context: an ssl.SSLContext for https:// URLs (TlsFiles.client_context()).
    """
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and client certificates, made
    with the openssl command line in the harness's temp dir.

    Attributes are file paths: ca, server_cert, server_key, client_cert,
    client_key, and other_cert/other_key (a client certificate signed by a
    CA etcd does not trust).
    """

    def __init__(self, h, name="tls"):
        self.dir = h.path(name)
        os.makedirs(self.dir, exist_ok=True)
        p = lambda f: os.path.join(self.dir, f)  # noqa: E731
        self.ca, self.ca_key = p("ca.crt"), p("ca.key")
        self.server_cert, self.server_key = p("server.crt"), p("server.key")
        self.client_cert, self.client_key = p("client.crt"), p("client.key")
        self.other_cert, self.other_key = p("other.crt"), p("other.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl(["req", "-x509"] + ec + ["-keyout", self.ca_key, "-out", self.ca,
                                               "-days", "2", "-subj", "/CN=lbtest-ca"])
        self._openssl(["req", "-x509"] + ec + ["-keyout", self.other_key, "-out", self.other_cert,
                                               "-days", "2", "-subj", "/CN=lbtest-stranger"])
        self._sign("server", self.server_cert, self.server_key,
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
        self._sign("lbd", self.client_cert, self.client_key, "extendedKeyUsage=clientAuth\n")

    def _openssl(self, args):
        rc, out, err = run(["openssl"] + args, timeout=60)
        if rc != 0:
            raise AssertionError("openssl %s failed: %s" % (" ".join(args[:2]), err.strip()))

    def _sign(self, cn, cert, key, extensions):
        csr, ext = cert + ".csr", cert + ".ext"
        with open(ext, "w") as f:
            f.write(extensions)
        self._openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn])
        self._openssl(["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                       "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])

    def client_context(self, with_cert=True):
        ctx = ssl.create_default_context(cafile=self.ca)
        if with_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx

    def lbd_args(self, with_cert=True):
        a = ["--etcd-ca", self.ca]
        if with_cert:
            a += ["--etcd-cert", self.client_cert, "--etcd-key", self.client_key]
        return a


class EtcdError(RuntimeError):
    pass


class EtcdClient:
    """put/get/delete/compact/leases through the v3 JSON gateway.

    With `login` set to (user, password), requests carry a token (raw in
    Authorization, as etcd wants it), renewed when etcd refuses it; with
    `tls` set to a TlsFiles, https endpoints are verified and the client
    certificate is shown.
    """

    login = None
    tls = None
    _token = None

    def endpoints(self):
        raise NotImplementedError

    def _context(self):
        return self.tls.client_context() if self.tls else None

    def _authenticate(self, url, timeout):
        user, password = self.login
        status, data = http_request(url + "/v3/auth/authenticate",
                                    {"name": user, "password": password}, timeout=timeout,
                                    context=self._context())
        if status != 200:
            raise EtcdError("login as %s -> HTTP %d %s" % (user, status, data[:200]))
        self._token = json.loads(data.decode())["token"]

    def _post(self, path, body, timeout=5.0):
        last = None
        for url in self.endpoints():
            try:
                for attempt in range(2):
                    headers = {}
                    if self.login:
                        if self._token is None:
                            self._authenticate(url, timeout)
                        headers["Authorization"] = self._token
                    status, data = http_request(url + path, body, timeout=timeout,
                                                headers=headers, context=self._context())
                    if status == 401 and self.login and attempt == 0:
                        self._token = None
                        continue
                    break
            except OSError as exc:
                last = exc
                continue
            obj = json.loads(data.decode() or "{}")
            if status != 200:
                raise EtcdError("%s -> HTTP %d %s" % (path, status, obj))
            return obj
        raise EtcdError("no etcd endpoint answered %s: %s" % (path, last))

    def put(self, key, value, lease=None):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._post("/v3/kv/put", body)["header"]["revision"])

    def get(self, key):
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def get_prefix(self, prefix):
        body = {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))}
        return {_unb64(kv["key"]): _unb64(kv.get("value", ""))
                for kv in self._post("/v3/kv/range", body).get("kvs", [])}

    def delete(self, key):
        return int(self._post("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0))

    def delete_prefix(self, prefix):
        body = {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))}
        return int(self._post("/v3/kv/deleterange", body).get("deleted", 0))

    def revision(self):
        return int(self._post("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self, revision=None, physical=True):
        rev = revision if revision is not None else self.revision()
        self._post("/v3/kv/compaction", {"revision": str(rev), "physical": physical})
        return rev

    def grant(self, ttl):
        return self._post("/v3/lease/grant", {"TTL": int(ttl)})["ID"]

    def revoke(self, lease_id):
        self._post("/v3/lease/revoke", {"ID": str(lease_id)})

    def lease_ttl(self, lease_id):
        """Seconds the lease has left (-1: gone), with the keys attached to it."""
        obj = self._post("/v3/lease/timetolive", {"ID": str(lease_id), "keys": True})
        return int(obj.get("TTL", -1)), [_unb64(k) for k in obj.get("keys", [])]

    def get_kv(self, key):
        """The raw kv of `key` (dict with value decoded, lease as int), or None."""
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        if not kvs:
            return None
        kv = dict(kvs[0])
        kv["value"] = _unb64(kv.get("value", ""))
        kv["lease"] = int(kv.get("lease", 0))
        return kv

    def put_many(self, items, batch=128):
        """Puts {key: value} in transactions of `batch` puts (etcd's default
        --max-txn-ops is 128): 10,000 keys in under 80 requests."""
        items = list(items.items()) if isinstance(items, dict) else list(items)
        for i in range(0, len(items), batch):
            ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}}
                   for k, v in items[i:i + batch]]
            self._post("/v3/kv/txn", {"success": ops}, timeout=30)

    def enable_auth(self, prefix, user, password, root_password="rootpw"):
        """Switches etcd users on: root (needed to enable auth, and kept for
        this client), and `user` with read-write on `prefix` only.  From here
        on this client logs in as root."""
        end = prefix_range_end(prefix)
        self._post("/v3/auth/user/add", {"name": "root", "password": root_password})
        self._post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self._post("/v3/auth/role/add", {"name": "lb"})
        self._post("/v3/auth/role/grant", {"name": "lb", "perm": {
            "permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(end)}})
        self._post("/v3/auth/user/add", {"name": user, "password": password})
        self._post("/v3/auth/user/grant", {"user": user, "role": "lb"})
        self._post("/v3/auth/enable", {})
        self.login = ("root", root_password)
        self._token = None

    def invalidate_tokens(self, user, password):
        """Sets `user`'s password (to the same one): etcd drops every token
        it gave that user, at once and for good (the change is in its log)."""
        self._post("/v3/auth/user/changepw", {"name": user, "password": password})

    def etcdctl(self, *args, timeout=30, input_bytes=None):
        """Runs Debian's etcdctl (API v3) against these endpoints: (rc, out, err)."""
        argv = ["etcdctl", "--endpoints", ",".join(self.endpoints()), "--dial-timeout", "5s"]
        return run(argv + list(args), timeout=timeout, env={"ETCDCTL_API": "3"},
                   input_bytes=input_bytes)


class Etcd(EtcdClient):
    """One etcd member on free loopback ports with its own temp data dir.

    kill() and stop() keep the data dir; restart() brings the member back on
    the same ports with the same data.
    """

    def __init__(self, h, name=None, cluster=None, client_port=None, peer_port=None, tls=None,
                 side_port=False, extra_args=()):
        self.h = h
        self.name = name or h.unique("etcd")
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.data_dir = h.path("%s.data" % self.name)
        self.cluster = cluster  # "n1=http://...,n2=..." for multi-member clusters
        self.tls = tls  # TlsFiles: clients only over TLS, with client certificates
        # A second client port only the test uses: hide() takes the main one
        # away from lbd while the test goes on changing etcd through this one.
        self.side_port = free_port() if side_port else None
        self.hidden = False
        self.extra_args = list(extra_args)
        self.proc = None
        self.starts = 0

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.client_port)

    @property
    def side_url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.side_port)

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    def endpoints(self):
        if self.hidden:
            return [self.side_url]
        return [self.url]

    def client_urls(self):
        urls = [] if self.hidden else [self.url]
        return ",".join(urls + ([self.side_url] if self.side_port else []))

    def argv(self):
        tls = []
        if self.tls:
            tls = ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                   "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        return ["etcd", "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_urls(),
                "--advertise-client-urls", self.client_urls(),
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.cluster or "%s=%s" % (self.name, self.peer_url),
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "lbtest-%s" % (self.cluster and "c" or self.name),
                "--listen-metrics-urls", "",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"] + tls + \
            self.extra_args

    def spawn(self):
        self.starts += 1
        self.proc = self.h.spawn("%s.%d" % (self.name, self.starts), self.argv())
        return self

    def healthy(self):
        if not self.proc.alive():
            raise AssertionError("etcd %s exited with %s:\n%s"
                                 % (self.name, self.proc.returncode, self.proc.log_tail(40)))
        status, body = http_request(self.endpoints()[0] + "/health", timeout=2,
                                    context=self._context())
        return status == 200 and json.loads(body.decode()).get("health") in (True, "true")

    def wait_healthy(self, timeout=None):
        wait_until(self.healthy, timeout or scaled(30), "etcd %s healthy at %s" % (self.name, self.url),
                   interval=0.1)
        return self

    def start(self, timeout=None):
        """Starts a single member and waits for /health.  Retries on port clashes."""
        for attempt in range(3):
            self.spawn()
            try:
                return self.wait_healthy(timeout)
            except AssertionError:
                if attempt < 2 and not self.proc.alive() and _addr_in_use(self.proc.log_text()):
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                    self.client_port, self.peer_port = free_port(), free_port()
                    continue
                raise
        raise AssertionError("unreachable")

    def kill(self):
        """SIGKILL: a crash.  Data dir kept."""
        self.proc.kill()

    def stop(self):
        rc, _ = self.proc.stop(timeout=10)
        return rc

    def restart(self, timeout=None):
        if self.proc is not None and self.proc.alive():
            self.stop()
        self.spawn()
        if self.cluster is None:
            self.wait_healthy(timeout)
        return self

    def hide(self, timeout=None):
        """Kills etcd and brings it back on the side port only: lbd's
        endpoint refuses connections while the test keeps changing etcd."""
        assert self.side_port, "Etcd(side_port=True) is needed to hide it"
        self.kill()
        self.hidden = True
        return self.restart(timeout)

    def unhide(self, timeout=None):
        """Kills etcd and brings it back on its main port too."""
        self.kill()
        self.hidden = False
        return self.restart(timeout)

    def wipe(self):
        """Kills etcd and deletes its data: it comes back as a new cluster."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdCluster(EtcdClient):
    """n members on loopback; client calls go to the first member that answers."""

    def __init__(self, h, n=3):
        self.h = h
        names = [h.unique("etcd-m%d" % i) for i in range(n)]
        ports = [(free_port(), free_port()) for _ in range(n)]
        cluster = ",".join("%s=http://127.0.0.1:%d" % (nm, pp) for nm, (_, pp) in zip(names, ports))
        self.members = [Etcd(h, nm, cluster=cluster, client_port=cp, peer_port=pp)
                        for nm, (cp, pp) in zip(names, ports)]

    @property
    def url(self):
        return ",".join(m.url for m in self.members)

    def endpoints(self):
        return [m.url for m in self.members if m.proc is not None and m.proc.alive()]

    def start(self, timeout=None):
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_healthy(timeout or scaled(60))
        return self

    def wait_healthy(self, timeout=None):
        for m in self.members:
            if m.proc.alive():
                m.wait_healthy(timeout or scaled(60))
        return self

    def leader(self):
        """Index of the member that is leader now (asked through etcdctl)."""
        rc, out, err = self.etcdctl("endpoint", "status", "-w", "json")
        if rc != 0:
            raise EtcdError(err)
        for st in json.loads(out):
            if st["Status"]["leader"] == st["Status"]["header"]["member_id"]:
                for i, m in enumerate(self.members):
                    if st["Endpoint"] == m.url:
                        return i
        raise EtcdError("no leader in %s" % out)


# ---------------------------------------------------------------------------
# Backends


# What a test client sends right after reading the backend's id line.  The
# backend counts a connection as a client's only once this arrives, so lbd's
# own TCP health checks (connect, close) never count as traffic.
HELLO = b"lbtest-hello\n"


class Backend:
    """A TCP server that says "<id>\\n" on each accepted connection, then echoes.

    Runs in threads of the test process.  count() is the number of client
    connections (those that sent HELLO, see ask()), client_times() their
    accept times (time.monotonic()); accepted counts every connection,
    health checks included.
    """

    def __init__(self, h, backend_id, port=0):
        self.id = backend_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        with _ports_lock:
            _ports_handed_out.add(self.port)
        self.lock = threading.Lock()
        self.accepted = 0
        self._client_times = []
        self.conns = set()
        self._stopping = threading.Event()
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="backend-%s" % backend_id,
                                          daemon=True)
        self._acceptor.start()
        if h is not None:
            h.servers.append(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            now = time.monotonic()
            with self.lock:
                self.accepted += 1
                self.conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn, now), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve(self, conn, accepted_at):
        try:
            conn.settimeout(None)
            conn.sendall(("%s\n" % self.id).encode())
            head = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                if len(head) < len(HELLO):
                    before = len(head)
                    head += data[: len(HELLO) - before]
                    if before < len(HELLO) <= len(head) and head == HELLO:
                        with self.lock:
                            self._client_times.append(accepted_at)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def count(self):
        """Client connections so far (health checks excluded)."""
        with self.lock:
            return len(self._client_times)

    def client_times(self, since=0.0):
        """Accept times of the client connections accepted at or after `since`."""
        with self.lock:
            return sorted(t for t in self._client_times if t >= since)

    def active(self):
        with self.lock:
            return len(self.conns)

    def stop(self):
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._acceptor.join(5)
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)


# ---------------------------------------------------------------------------
# Clients of the balanced ports


def read_line(sock, limit=256):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            break
    return buf.decode("utf-8", "replace").strip() if buf.endswith(b"\n") else None


def _hello(sock):
    """Sends HELLO and reads its echo: the backend now counts us as a client."""
    if echo(sock, HELLO) != HELLO:
        raise ConnectionError("no echo of the hello")


def ask(port, timeout=5.0):
    """One new connection to a balanced port: the id of the backend that answered.

    Reads the id line, sends HELLO and reads its echo, closes.  Returns None
    when the connection closes before a full line arrives.  Raises OSError
    when the connection cannot be made or breaks after the id.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        bid = read_line(s)
        if bid is not None:
            _hello(s)
        return bid


def ask_many(port, n, timeout=5.0):
    """n sequential connections: Counter of answering ids (None = no answer)."""
    c = collections.Counter()
    for _ in range(n):
        try:
            c[ask(port, timeout)] += 1
        except OSError:
            c[None] += 1
    return c


def open_conn(port, timeout=5.0):
    """A connection kept open: (socket, id of the backend that answered)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        bid = read_line(s)
        if bid is not None:
            _hello(s)
        return s, bid
    except Exception:
        s.close()
        raise


def echo(sock, payload):
    """Sends payload on an open connection and reads back as many bytes."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        if not chunk:
            break
        got += chunk
    return got


# ---------------------------------------------------------------------------
# lbd, lbctl, lbctl register


def parse_prometheus(text):
    """[(name, {label: value}, float)] from Prometheus text format."""
    out = []
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?\s*$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            raise ValueError("not a Prometheus sample line: %r" % line)
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in label_re.findall(m.group(3) or "")}
        out.append((m.group(1), labels, float(m.group(4))))
    return out


class Lbd:
    """lbd on free loopback ports: one listener per pool, admin and http."""

    def __init__(self, h, etcd_url, prefix, pools, extra_args=(), env=None, name="lbd"):
        self.h = h
        self.etcd_url = etcd_url
        self.prefix = prefix
        self.pool_names = list(pools)
        self.extra_args = list(extra_args)
        self.env = env
        self.name = name
        self.proc = None
        self.starts = 0
        self._pick_ports()

    def _pick_ports(self):
        self.pools = {p: free_port() for p in self.pool_names}
        self.admin_port = free_port()
        self.http_port = free_port()

    @property
    def admin(self):
        return "127.0.0.1:%d" % self.admin_port

    def pool_port(self, pool):
        return self.pools[pool]

    def argv(self):
        a = [lbd_binary(), "--etcd", self.etcd_url, "--prefix", self.prefix]
        for p, port in self.pools.items():
            a += ["--pool", "%s=127.0.0.1:%d" % (p, port)]
        a += ["--admin", self.admin, "--http", "127.0.0.1:%d" % self.http_port,
              "--log-level", "debug"]
        return a + self.extra_args

    def http_get(self, path, timeout=3.0):
        return http_request("http://127.0.0.1:%d%s" % (self.http_port, path), timeout=timeout)

    def ready(self):
        if not self.proc.alive():
            raise AssertionError("lbd exited with %s before it was ready:\n%s"
                                 % (self.proc.returncode, self.proc.log_tail(60)))
        return self.http_get("/readyz")[0] == 200

    def up(self):
        if not self.proc.alive():
            raise AssertionError("lbd exited with %s:\n%s"
                                 % (self.proc.returncode, self.proc.log_tail(60)))
        return self.http_get("/healthz")[0] == 200

    def start(self, timeout=None, wait_ready=True):
        """Starts lbd and waits for /readyz 200 (or, with wait_ready=False,
        for /healthz: lbd is up but may not have reached etcd)."""
        for attempt in range(3):
            self.starts += 1
            self.proc = self.h.spawn("%s.%d" % (self.name, self.starts), self.argv(), env=self.env)
            try:
                if wait_ready:
                    wait_until(self.ready, timeout or scaled(30), "lbd /readyz 200",
                               interval=0.05)
                else:
                    wait_until(self.up, timeout or scaled(30), "lbd /healthz 200", interval=0.05)
                return self
            except AssertionError:
                if attempt < 2 and not self.proc.alive() and _addr_in_use(self.proc.log_text()):
                    self._pick_ports()
                    continue
                raise
        raise AssertionError("unreachable")

    def log_text(self):
        return self.proc.log_text()

    def metrics(self):
        status, body = self.http_get("/metrics")
        if status != 200:
            raise AssertionError("/metrics answered %d: %r" % (status, body[:200]))
        return parse_prometheus(body.decode())

    def metric(self, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(v for n, lab, v in self.metrics()
                   if n == name and all(lab.get(k) == str(x) for k, x in labels.items()))

    def watch_state(self):
        """The etcd watcher's state ("watching", "backoff", ...) from /metrics."""
        for n, lab, v in self.metrics():
            if n == "lbd_etcd_watch_state" and v == 1:
                return lab["state"]
        return None

    def watched_endpoint(self):
        """The etcd endpoint lbd's watch is connected to, or None when not watching."""
        samples = self.metrics()
        state = [lab["state"] for n, lab, v in samples if n == "lbd_etcd_watch_state" and v == 1]
        if state != ["watching"]:
            return None
        for n, lab, v in samples:
            if n == "lbd_etcd_endpoint_info" and v == 1:
                return lab["endpoint"]
        return None

    def ctl(self, *args, output=None, timeout=30):
        """lbctl against this lbd's admin port: (rc, stdout, stderr)."""
        return lbctl(*args, admin=self.admin, output=output, timeout=timeout)

    def ctl_json(self, *args, timeout=30):
        rc, out, err = self.ctl(*args, output="json", timeout=timeout)
        if rc != 0:
            raise AssertionError("lbctl -o json %s: rc=%d stderr=%s" % (" ".join(args), rc, err.strip()))
        try:
            return json.loads(out)
        except ValueError as exc:
            raise AssertionError("lbctl -o json %s printed no JSON (%s): %r"
                                 % (" ".join(args), exc, out[:500]))

    def backends(self, pool=None):
        """{id: backend dict} from `lbctl -o json backends [POOL]`."""
        args = ["backends"] + ([pool] if pool else [])
        return {b["id"]: b for b in backends_from_json(self.ctl_json(*args))}

    def stop(self, expect_rc=0, timeout=None):
        """SIGTERM, wait with a deadline, SIGKILL if needed; asserts the exit code."""
        if self.proc is None:
            return None
        was_alive = self.proc.alive()
        rc, killed = self.proc.stop(timeout=timeout or scaled(20))
        if killed:
            raise AssertionError("lbd did not exit within the deadline after SIGTERM:\n%s"
                                 % self.proc.log_tail(40))
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError("lbd exited with %s (expected %s%s):\n%s"
                                 % (rc, expect_rc, "" if was_alive else ", it had died earlier",
                                    self.proc.log_tail(60)))
        return rc


def backends_from_json(obj):
    """The list of backend objects in lbctl's JSON (a list, or {"backends": [...]})."""
    if isinstance(obj, dict):
        for key in ("backends", "items"):
            if isinstance(obj.get(key), list):
                return obj[key]
    if isinstance(obj, list):
        return obj
    raise AssertionError("unexpected lbctl JSON for backends: %r" % (obj,))


def lbctl(*args, admin=None, output=None, timeout=30, env=None):
    """Runs lbctl; returns (rc, stdout, stderr)."""
    argv = [lbctl_binary()]
    if admin:
        argv += ["--admin", admin]
    if output:
        argv += ["-o", output]
    return run(argv + list(args), timeout=timeout, env=env)


def backend_key(prefix, pool, backend_id):
    return "%spools/%s/backends/%s" % (prefix, pool, backend_id)


def backend_value(addr, weight=100):
    return json.dumps({"addr": addr, "weight": weight})


def etcd_pool(client, prefix, pool):
    """{id: (addr, weight)} of the backends etcd holds for `pool`."""
    base = "%spools/%s/backends/" % (prefix, pool)
    out = {}
    for key, value in client.get_prefix(base).items():
        v = json.loads(value)
        out[key[len(base):]] = (v["addr"], int(v.get("weight", 100)))
    return out


def lbd_pool(lbd, pool):
    """{id: (addr, weight)} of the backends lbd serves for `pool` (lbctl -o json)."""
    return {i: (b["addr"], int(b["weight"])) for i, b in lbd.backends(pool).items()}


def override_key(prefix, pool, backend_id):
    return "%spools/%s/overrides/%s" % (prefix, pool, backend_id)


class Registrar:
    """`lbctl register` for one backend, in the background."""

    def __init__(self, h, etcd, prefix, pool, backend_id, addr, ttl="2s", weight=None,
                 extra_args=(), env=None):
        self.h = h
        self.etcd = etcd
        self.prefix = prefix
        self.pool = pool
        self.id = backend_id
        self.addr = addr
        argv = [lbctl_binary(), "register", "--etcd", etcd.url, "--prefix", prefix,
                "--pool", pool, "--id", backend_id, "--addr", addr, "--ttl", ttl]
        if weight is not None:
            argv += ["--weight", str(weight)]
        self.proc = h.spawn("register-%s-%s" % (pool, backend_id), argv + list(extra_args),
                            env=env)

    @property
    def key(self):
        return backend_key(self.prefix, self.pool, self.id)

    def registered(self):
        if not self.proc.alive():
            raise AssertionError("lbctl register %s exited with %s:\n%s"
                                 % (self.id, self.proc.returncode, self.proc.log_tail(20)))
        return self.etcd.get(self.key) is not None

    def wait_registered(self, timeout=None):
        wait_until(self.registered, timeout or scaled(15), "key %s in etcd" % self.key)
        return self

    def stop(self, timeout=10):
        """SIGTERM; returns the exit code (asserts it exited in time)."""
        rc, killed = self.proc.stop(timeout=timeout)
        if killed:
            raise AssertionError("lbctl register %s ignored SIGTERM for %ss:\n%s"
                                 % (self.id, timeout, self.proc.log_tail(20)))
        return rc


class ClientLoop:
    """A client thread that makes a new connection through a balanced port
    every `interval` seconds: reads the backend's id, echoes HELLO, closes.

    Records every attempt as (start time, seconds taken, backend id or
    None, error text or None).  stop() ends it and returns the records.
    """

    def __init__(self, port, interval=0.01, timeout=5.0):
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.records = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)
        self._thread.start()

    def _run(self):
        next_at = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            bid, err = None, None
            try:
                bid = ask(self.port, self.timeout)
                if bid is None:
                    err = "connection closed before the backend's id"
            except OSError as exc:
                err = "%s: %s" % (type(exc).__name__, exc)
            self.records.append((t0, time.monotonic() - t0, bid, err))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()

    def failures(self):
        return [r for r in list(self.records) if r[3] is not None]

    def count(self):
        return len(self.records)

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return list(self.records)


def percentile(values, p):
    """The p-th percentile (0..100) of values, nearest rank."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


# ---------------------------------------------------------------------------
# unittest glue


class HarnessTestCase(unittest.TestCase):
    """Base class: a Harness per test class in cls.h, logs dumped on failure.

    Subclasses put their fixtures in setUpWorld(cls) (a classmethod); if it
    fails, the logs are printed and everything started so far is stopped.
    """

    h = None

    @classmethod
    def setUpWorld(cls):
        pass

    @classmethod
    def setUpClass(cls):
        cls.h = Harness(cls.__name__)
        try:
            cls.setUpWorld()
        except BaseException:
            cls.h.dump_logs()
            cls.h.cleanup()
            raise

    @classmethod
    def tearDownWorld(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        try:
            cls.tearDownWorld()
        except BaseException:
            cls.h.dump_logs()
            raise
        finally:
            cls.h.cleanup()

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not getattr(outcome, "success", True) and self.h is not None:
            sys.stderr.write("\n===== %s failed: logs =====\n" % self.id())
            self.h.dump_logs()


def main():
    """unittest.main() that first takes --bin-dir DIR off the command line."""
    argv = list(sys.argv)
    rest = [argv[0]]
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--bin-dir" and i + 1 < len(argv):
            os.environ["LB_BUILD_DIR"] = os.path.abspath(argv[i + 1])
            i += 2
            continue
        if a.startswith("--bin-dir="):
            os.environ["LB_BUILD_DIR"] = os.path.abspath(a.split("=", 1)[1])
            i += 1
            continue
        rest.append(a)
        i += 1
    unittest.main(argv=rest, verbosity=2)
