"""lbd and lbctl: Lbd runs the daemon on free loopback ports (a listener
per pool, admin and http) and reads its /metrics and `lbctl -o json`;
lbctl() runs the command line; Registrar keeps `lbctl register` running in
the background; backend_key() and friends spell the etcd key schema.
"""

import json
import re

from .clients import http_request
from .procs import addr_in_use, free_port, lbctl_binary, lbd_binary, run, scaled, wait_until


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
                if attempt < 2 and not self.proc.alive() and addr_in_use(self.proc.log_text()):
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
