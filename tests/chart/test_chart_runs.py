#!/usr/bin/python3
"""The chart's rendered commands, run for real: for the defaults and every
ci/*.yaml, take the Deployment's lbd container (args and env) and the
register sidecar's `lbctl register` (args and env, $(VAR) expanded as
kubelet does), change only what cannot run here, and run them with the
integration harness against a real etcd:

- addresses: --etcd becomes the test etcd (TLS with client certificates
  and/or users when the values ask for them), each --pool, --admin and
  --http listener 127.0.0.1 on a free port (name and options kept), the
  sidecar's $(POD_IP):PORT the test backend's port; an http:// check URL's
  port goes to a small HTTP server answering 200 (in a pod the app serves
  both; here the echo backend and the check are two servers);
- files: every path under a volume mount becomes the same path under a
  temp dir holding that volume's files (Secrets from test fixtures: the
  TLS files, USER:PASSWORD, the token; chart ConfigMaps from the render),
  with the volume's defaultMode.

Then lbd must become ready, the sidecar must register its backend, each
pool must carry a client to its backend (a PROXY header first where the
pool accepts one; the backend sees the client address from it where the
pool policy sends PROXY on), lbctl must reach the admin API (refused
without the token when one is set).  The policy hook Job's shell script
runs with /bin/sh against the same etcd (curl, TLS, login) and must write
each pool's policy.  With the defaults, SIGTERM turns /readyz off at
once, lbd keeps accepting for --shutdown-delay and exits 0 well within
terminationGracePeriodSeconds.

A case skips (naming the flags) while the lbd or lbctl under test lacks a
flag the chart renders; the hook script cases need neither.
"""

import json
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chartlib  # noqa: E402

import lbtest  # noqa: E402  (chartlib put tests/integration on sys.path)
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, TlsFiles, ask,  # noqa: E402
                    free_port, lbctl_binary, lbd_binary, read_line, run, scaled, wait_until)

ETCD_USER, ETCD_PASSWORD = "lbd", 's3cr3t:"q\\'  # a colon, a quote, a backslash
ADMIN_TOKEN = "chart-test-token-1234"
POD_NAME = "backend-7d9f-x2x"


def cases():
    """ci/default-values.yaml is the defaults (with the image lbd does not
    publish); test_chart_render.py renders values.yaml alone too."""
    out = []
    for f in chartlib.ci_files():
        out.append((os.path.basename(f)[: -len("-values.yaml")].replace("-", "_"), [f], []))
    return out


def expand_k8s_vars(text, env):
    """kubelet's $(VAR) expansion in command/args ($$ escapes)."""
    def sub(m):
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)


class ReadyServer:
    """An HTTP server answering 200 to every GET: the backend's own check."""

    def __init__(self, h):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        h.servers.append(self)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Pod:
    """What a pod would have: its volumes materialized under a temp dir."""

    def __init__(self, h, tag, volumes, fixtures, configmaps):
        self.dir = h.path("pod-%s" % tag)
        self.volumes = {}
        for v in volumes:
            d = os.path.join(self.dir, v["name"])
            os.makedirs(d, exist_ok=True)
            files, mode = {}, None
            if "secret" in v:
                name = v["secret"]["secretName"]
                if name not in fixtures:
                    raise AssertionError("no test fixture for Secret %s" % name)
                files, mode = fixtures[name], v["secret"].get("defaultMode")
            elif "configMap" in v:
                name = v["configMap"]["name"]
                files = configmaps.get(name) or fixtures.get(name)
                if files is None:
                    raise AssertionError("no ConfigMap %s in the render nor as a fixture" % name)
                mode = v["configMap"].get("defaultMode")
            elif "emptyDir" not in v:
                raise AssertionError("volume %s: only secret, configMap and emptyDir are run here" % v["name"])
            for fname, content in files.items():
                p = os.path.join(d, fname)
                with open(p, "wb") as f:
                    f.write(content.encode() if isinstance(content, str) else content)
                os.chmod(p, mode if mode is not None else 0o644)
            self.volumes[v["name"]] = d

    def mounts(self, container):
        """[(mountPath, local dir)], longest first."""
        out = []
        for m in container.get("volumeMounts", []):
            local = self.volumes[m["name"]]
            if m.get("subPath"):
                local = os.path.join(local, m["subPath"])
            out.append((m["mountPath"].rstrip("/"), local))
        return sorted(out, key=lambda x: -len(x[0]))

    def rewrite_paths(self, container, value):
        for mount, local in self.mounts(container):
            if value == mount or value.startswith(mount + "/"):
                return local + value[len(mount):]
        return value


class ChartRuns(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.lbd_help = run([lbd_binary(), "--help"])[1]
        rc, out, err = run([lbctl_binary(), "register", "--help"])
        cls.register_help = out + err

    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    # -- the world a case needs ------------------------------------------------

    def start_etcd(self, values):
        et = values["etcd"]
        self.tls = TlsFiles(self.h) if et["tlsSecret"] else None
        if self.tls and et["userSecret"]:
            self.client_cert_without_cn(self.tls)
        etcd = Etcd(self.h, tls=self.tls).start()
        if et["userSecret"]:
            etcd.enable_auth(et["prefix"], ETCD_USER, ETCD_PASSWORD)
        return etcd

    @staticmethod
    def client_cert_without_cn(tls):
        """etcd's gateway answers 400 ("CommonName of client sending a request
        against gateway will be ignored") to a client certificate with a CN
        once users are on: TLS and users together need a certificate
        without one (docs/kubernetes.md says so)."""
        key, csr, cert = (os.path.join(tls.dir, "nocn." + x) for x in ("key", "csr", "crt"))
        ext = os.path.join(tls.dir, "nocn.ext")
        with open(ext, "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        for argv in (["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", key, "-out", csr, "-subj", "/O=lbd-chart-test"],
                     ["openssl", "x509", "-req", "-in", csr, "-CA", tls.ca, "-CAkey", tls.ca_key,
                      "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext]):
            rc, out, err = run(argv, timeout=60)
            if rc != 0:
                raise AssertionError("%s failed: %s" % (" ".join(argv[:2]), err))
        tls.client_cert, tls.client_key = cert, key

    def fixtures(self, values):
        def read(p):
            with open(p) as f:
                return f.read()
        fx = {}
        et, adm = values["etcd"], values["admin"]
        if et["tlsSecret"]:
            fx[et["tlsSecret"]] = {"ca.crt": read(self.tls.ca), "tls.crt": read(self.tls.client_cert),
                                   "tls.key": read(self.tls.client_key)}
        if et["userSecret"]:
            fx[et["userSecret"]] = {"user": "%s:%s\n" % (ETCD_USER, ETCD_PASSWORD)}
        if adm["tokenSecret"]:
            fx[adm["tokenSecret"]] = {"token": ADMIN_TOKEN + "\n"}
        if adm["tlsSecret"]:
            self.admin_tls = TlsFiles(self.h, "admin-tls")
            fx[adm["tlsSecret"]] = {"tls.crt": read(self.admin_tls.server_cert),
                                    "tls.key": read(self.admin_tls.server_key)}
        # extraVolumes' ConfigMaps that the chart does not make
        for v in values["extraVolumes"]:
            if "configMap" in v:
                fx.setdefault(v["configMap"]["name"], {"ca.crt": "# test bundle\n"})
            if "secret" in v:
                fx.setdefault(v["secret"]["secretName"], {"data": "test\n"})
        return fx

    @staticmethod
    def configmaps(docs):
        return {d["metadata"]["name"]: d.get("data", {}) for d in chartlib.by_kind(docs, "ConfigMap")}

    def missing_flags(self, args, help_text):
        missing = []
        for a in args:
            if a.startswith("--") and not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(a.split("=")[0]),
                                                    help_text):
                missing.append(a)
        return missing

    # -- lbd --------------------------------------------------------------------

    def lbd_command(self, r, etcd, pod):
        """argv and env of the lbd container, rewritten to run here, and
        {pool: port}, the admin and http addresses."""
        c = r["lbd"]
        self.assertNotIn("command", c, "the image's entrypoint is lbd")
        args = list(c["args"])
        out, pools, i = [lbd_binary()], {}, 0
        admin = http = None
        while i < len(args):
            a = args[i]
            self.assertFalse(re.match(r"^--(etcd|pool|admin|http)=", a), "split --flag VALUE expected: " + a)
            if a in ("--etcd", "--pool", "--admin", "--http"):
                v = args[i + 1]
                if a == "--etcd":
                    v = etcd.url
                elif a == "--pool":
                    name, rest = v.split("=", 1)
                    _, _, opts = rest.partition(",")
                    pools[name] = free_port()
                    v = "%s=127.0.0.1:%d%s" % (name, pools[name], "," + opts if opts else "")
                else:
                    v = "127.0.0.1:%d" % free_port()
                    if a == "--admin":
                        admin = v
                    else:
                        http = v
                out += [a, v]
                i += 2
                continue
            out.append(pod.rewrite_paths(c, a))
            i += 1
        env = {}
        for e in c.get("env", []):
            self.assertIn("value", e, "lbd env %s: only plain values run here" % e["name"])
            env[e["name"]] = pod.rewrite_paths(c, e["value"])
        return out, env, pools, admin, http

    def start_lbd(self, argv, env, http):
        proc = self.h.spawn("lbd", argv, env=env)

        def ready_or_gone():
            return not proc.alive() or lbtest.http_request("http://%s/readyz" % http, timeout=2)[0] == 200
        wait_until(ready_or_gone, scaled(30), "lbd /readyz 200")
        if not proc.alive():
            raise AssertionError("lbd exited with %s:\n%s" % (proc.popen.returncode, proc.log_tail(30)))
        return proc

    # -- the register sidecar ------------------------------------------------------

    def register_command(self, container, etcd, pod, backend_port, ready_port):
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = pod.rewrite_paths(container, e["value"])
                continue
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": POD_NAME, "status.podIP": "127.0.0.1"}[field]
        self.assertEqual(container["command"], ["/usr/bin/lbctl"])
        args = [expand_k8s_vars(a, env) for a in container["args"]]
        out, i = [lbctl_binary()], 0
        while i < len(args):
            a = args[i]
            if a in ("--etcd", "--addr", "--check") and i + 1 < len(args):
                v = args[i + 1]
                if a == "--etcd":
                    v = etcd.url
                elif a == "--addr":
                    host, port = v.rsplit(":", 1)
                    self.assertEqual(host, "127.0.0.1", "--addr is $(POD_IP):PORT")
                    self.app_port = int(port)
                    v = "127.0.0.1:%d" % backend_port
                elif v.startswith("http://"):
                    v = re.sub(r"^http://127\.0\.0\.1:\d+", "http://127.0.0.1:%d" % ready_port, v)
                out += [a, v]
                i += 2
                continue
            out.append(pod.rewrite_paths(container, a))
            i += 1
        return out, {k: v for k, v in env.items() if k not in ("POD_NAME", "POD_IP")}

    # -- the policy hook ---------------------------------------------------------

    def run_policy_hook(self, docs, etcd, fixtures, values):
        jobs = chartlib.by_kind(docs, "Job")
        if not jobs:
            return False
        spec = jobs[0]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        pod = Pod(self.h, "hook", spec["volumes"], fixtures, self.configmaps(docs))
        self.assertEqual(c["command"], ["/bin/sh", "-c"])
        script = c["args"][0]
        for mount, local in pod.mounts(c):
            script = script.replace(mount + "/", local + "/")
        env = {}
        for e in c["env"]:
            env[e["name"]] = pod.rewrite_paths(c, e["value"])
        env["LBD_ETCD"] = etcd.url
        rc, out, err = run(["/bin/sh", "-c", script], env=env, timeout=120)
        self.assertEqual(rc, 0, "the hook script failed:\n%s%s" % (out, err))
        prefix = values["etcd"]["prefix"]
        for p in values["pools"]:
            if p.get("policy"):
                got = etcd.get("%spools/%s/config" % (prefix, p["name"]))
                self.assertIsNotNone(got, "no policy for pool %s" % p["name"])
                self.assertEqual(json.loads(got), p["policy"])
                self.assertIn("policy for pool %s written" % p["name"], out)
        self.assertNotIn(ETCD_PASSWORD, out + err)
        return True

    # -- traffic ---------------------------------------------------------------------

    @staticmethod
    def ask_proxied(port, src="203.0.113.7", timeout=5.0):
        """A client behind a cloud load balancer: PROXY v1 first, then the
        backend's first line (its id, or its JSON view of lbd's header)."""
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(("PROXY TCP4 %s 127.0.0.1 40123 %d\r\n" % (src, port)).encode())
            line = read_line(s, limit=4096)
            if line is not None and not line.startswith("{"):
                s.sendall(lbtest.HELLO)
            return line

    def check_traffic(self, values, pools, backends):
        for p in values["pools"]:
            name = str(p["name"])
            port = pools[name]
            b = backends[name]
            if p.get("acceptProxy"):
                line = wait_until(lambda: self.ask_proxied(port), scaled(15),
                                  "pool %s (PROXY) reaches its backend" % name)
                if b.proxy_header:
                    info = json.loads(line)
                    self.assertEqual(info["id"], b.id)
                    self.assertEqual(info["src"][0], "203.0.113.7", info)
                else:
                    self.assertEqual(line, b.id)
                # without a PROXY header, lbd turns the client away
                try:
                    self.assertNotEqual(ask(port, timeout=3), b.id)
                except OSError:
                    pass
            elif b.proxy_header:  # lbd sends PROXY on, from the client's own address
                def first_line():
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                        return read_line(s, limit=4096)
                line = wait_until(first_line, scaled(15), "pool %s reaches its backend" % name)
                info = json.loads(line)
                self.assertEqual((info["id"], info["src"][0]), (b.id, "127.0.0.1"))
            else:
                got = wait_until(lambda: ask(port) == b.id and b.id, scaled(15),
                                 "pool %s reaches backend %s" % (name, b.id))
                self.assertEqual(got, b.id)

    # -- one case ----------------------------------------------------------------------

    def run_case(self, files, sets):
        docs = chartlib.render(files, sets)
        values = chartlib.merged_values(files, sets)
        dep = chartlib.one(docs, "Deployment")
        pod_spec = dep["spec"]["template"]["spec"]
        lbd_c = [c for c in pod_spec["containers"] if c["name"] == "lbd"][0]
        sidecar = chartlib.register_sidecar(docs)
        missing = self.missing_flags(lbd_c["args"], self.lbd_help)
        if any(a.endswith(",accept-proxy") for a in lbd_c["args"]) and "accept-proxy" not in self.lbd_help:
            missing.append("--pool ...,accept-proxy")
        if sidecar:
            missing += ["lbctl register " + m for m in self.missing_flags(sidecar[0]["args"], self.register_help)]
        if missing:
            self.skipTest("the binaries under test lack what the chart renders: " + ", ".join(missing))

        etcd = self.start_etcd(values)
        fixtures = self.fixtures(values)
        self.run_policy_hook(docs, etcd, fixtures, values)

        # backends: the sidecar registers the one of its pool; the others
        # are put straight into etcd (any etcd client may register)
        prefix = values["etcd"]["prefix"]
        reg_pool = str(values["register"]["pool"] or values["pools"][0]["name"])
        backends = {}
        for i, p in enumerate(values["pools"]):
            proxy_on = (p.get("policy") or {}).get("proxy_protocol", "none") != "none"
            backends[str(p["name"])] = Backend(self.h, "b%d" % i, proxy_header=proxy_on)
        for name, b in backends.items():
            if name != reg_pool or not sidecar:
                etcd.put(lbtest.backend_key(prefix, name, b.id), lbtest.backend_value(b.addr))

        pod = Pod(self.h, "lbd", pod_spec.get("volumes", []), fixtures, self.configmaps(docs))
        argv, env, pools, admin, http = self.lbd_command({"lbd": lbd_c}, etcd, pod)
        lbd = self.start_lbd(argv, env, http)

        if sidecar:
            container, volumes = sidecar
            spod = Pod(self.h, "sidecar", volumes, fixtures, {})
            ready = ReadyServer(self.h)
            rargv, renv = self.register_command(container, etcd, spod, backends[reg_pool].port, ready.port)
            self.h.spawn("lbctl-register", rargv, env=renv)
            key = lbtest.backend_key(prefix, reg_pool, POD_NAME)
            wait_until(lambda: etcd.get(key), scaled(30), "the sidecar's key %s" % key)
            self.assertEqual(json.loads(etcd.get(key))["addr"], backends[reg_pool].addr)

        self.check_traffic(values, pools, backends)
        self.check_admin(values, admin)
        return lbd, values, dep, pools, backends, http

    def check_admin(self, values, admin):
        base = [lbctl_binary(), "--admin", admin, "-o", "json"]
        if values["admin"]["tlsSecret"]:
            base += ["--admin-ca", self.admin_tls.ca]
        if values["admin"]["tokenSecret"]:
            rc, out, err = run(base + ["pools"])
            self.assertNotEqual(rc, 0, "the admin API answered without the token")
            tok = self.h.path("admin-token")
            with open(tok, "w") as f:
                f.write(ADMIN_TOKEN + "\n")
            os.chmod(tok, stat.S_IRUSR | stat.S_IWUSR)
            base += ["--admin-token-file", tok]
        rc, out, err = run(base + ["pools"])
        self.assertEqual(rc, 0, "lbctl pools: %s" % err)
        names = json.dumps(json.loads(out))
        for p in values["pools"]:
            self.assertIn(json.dumps(str(p["name"])), names)

    def check_sigterm(self, lbd, values, dep, pools, backends, http):
        delay = values["shutdown"]["delaySeconds"]
        tgps = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        name = str(values["pools"][0]["name"])
        t0 = time.monotonic()
        lbd.send_signal(signal.SIGTERM)
        wait_until(lambda: not_ready(http), 1.0, "/readyz off within 1 s of SIGTERM")
        # still accepting during the delay
        if delay >= 2:
            self.assertEqual(ask(pools[name]), backends[name].id)
            self.assertLess(time.monotonic() - t0, delay)
        rc = lbd.wait(tgps)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, lbd.log_tail(20))
        self.assertGreaterEqual(took, delay * 0.9, "lbd left before --shutdown-delay")
        self.assertLess(took, tgps)

    def check_second_sigterm(self, lbd, values, http):
        """A second SIGTERM during the shutdown delay (an operator's kill, or
        kubelet's at the end of the grace period) ends lbd at once, exit 0."""
        delay = values["shutdown"]["delaySeconds"]
        lbd.send_signal(signal.SIGTERM)
        wait_until(lambda: not_ready(http), scaled(5), "/readyz off after SIGTERM")
        t0 = time.monotonic()
        lbd.send_signal(signal.SIGTERM)
        rc = lbd.wait(scaled(5))
        self.assertEqual(rc, 0, lbd.log_tail(20))
        if delay >= 2:
            self.assertLess(time.monotonic() - t0, delay / 2,
                            "a second SIGTERM waited for --shutdown-delay")


def not_ready(http):
    try:
        return lbtest.http_request("http://%s/readyz" % http, timeout=1)[0] != 200
    except OSError:
        return True  # the probe port closed: kubelet counts that as not ready too


def _make_run_test(files, sets, sigterm):
    def test(self):
        lbd, values, dep, pools, backends, http = self.run_case(files, sets)
        if sigterm:
            self.check_sigterm(lbd, values, dep, pools, backends, http)
        else:
            self.check_second_sigterm(lbd, values, http)
    return test


def _make_hook_test(files, sets):
    def test(self):
        docs = chartlib.render(files, sets)
        if not chartlib.by_kind(docs, "Job"):
            self.skipTest("no hook Job with these values")
        values = chartlib.merged_values(files, sets)
        etcd = self.start_etcd(values)
        self.assertTrue(self.run_policy_hook(docs, etcd, self.fixtures(values), values))
        # again, as on an upgrade: the same keys, rewritten
        self.assertTrue(self.run_policy_hook(docs, etcd, self.fixtures(values), values))
    return test


for _label, _files, _sets in cases():
    setattr(ChartRuns, "test_run_%s" % _label, _make_run_test(_files, _sets, _label == "default"))
    setattr(ChartRuns, "test_policy_hook_%s" % _label, _make_hook_test(_files, _sets))


if __name__ == "__main__":
    lbtest.main()
