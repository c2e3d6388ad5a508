"""etcd: one member (Etcd) or a cluster (EtcdCluster) on free loopback
ports, each with its own temp data dir, and EtcdClient, the put/get/lease
calls tests make through etcd's v3 JSON gateway (with users and TLS when
the member has them).  Always Debian's real etcd and etcdctl, never a mock.
"""

import base64
import json
import shutil

from .clients import http_request
from .procs import addr_in_use, free_port, run, scaled, wait_until


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
                if attempt < 2 and not self.proc.alive() and addr_in_use(self.proc.log_text()):
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
