#!/usr/bin/python3
"""Offline checks of deploy/: what can be verified without helm, docker or
a cluster.  YAML parses, every .Values path a template uses exists in
values.yaml, template blocks balance, the sidecar takes its address from the
downward API, the systemd units have what they promise, scripts parse."""

import glob
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402

try:
    import yaml
except ImportError:  # python3-yaml is in deploy/install-deps.sh; degrade if absent
    yaml = None

DEPLOY = os.path.join(lbtest.REPO_ROOT, "deploy")
CHART = os.path.join(DEPLOY, "helm", "lbd")


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


class HelmChart(unittest.TestCase):
    def setUp(self):
        self.templates = {os.path.basename(p): read(p)
                          for p in glob.glob(os.path.join(CHART, "templates", "*"))}

    @unittest.skipIf(yaml is None, "python3-yaml not installed")
    def test_chart_and_values_parse(self):
        chart = yaml.safe_load(read(CHART, "Chart.yaml"))
        self.assertEqual(chart["apiVersion"], "v2")
        self.assertEqual(chart["name"], "lbd")
        values = yaml.safe_load(read(CHART, "values.yaml"))
        self.assertTrue(values["etcd"]["endpoints"])
        self.assertTrue(values["etcd"]["prefix"].endswith("/"))
        self.assertTrue(all({"name", "port", "servicePort"} <= set(p) for p in values["pools"]))

    @unittest.skipIf(yaml is None, "python3-yaml not installed")
    def test_schema_ci_values_and_kube_version(self):
        # The rendering, schema and invariant checks live in tests/chart/
        # (ctest -L chart); here only that the pieces are there and parse.
        import json
        schema = json.loads(read(CHART, "values.schema.json"))
        self.assertEqual(schema["$schema"], "http://json-schema.org/draft-07/schema#")
        values = yaml.safe_load(read(CHART, "values.yaml"))
        self.assertEqual(set(values) - set(schema["properties"]), set())
        ci = glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))
        self.assertGreaterEqual(len(ci), 10)
        for f in ci:
            self.assertIsInstance(yaml.safe_load(read(f)), dict, f)
        chart = yaml.safe_load(read(CHART, "Chart.yaml"))
        self.assertTrue(chart["kubeVersion"].startswith(">=1.24"))

    @unittest.skipIf(yaml is None, "python3-yaml not installed")
    def test_every_values_reference_exists(self):
        values = yaml.safe_load(read(CHART, "values.yaml"))
        optional = {"nameOverride", "fullnameOverride"}  # read with default
        for name, text in self.templates.items():
            for ref in re.findall(r"\.Values((?:\.[A-Za-z0-9_]+)+)", text):
                path = ref.strip(".").split(".")
                if path[0] in optional:
                    continue
                node = values
                for part in path:
                    self.assertIsInstance(node, dict, "%s: .Values%s" % (name, ref))
                    self.assertIn(part, node, "%s uses .Values%s, not in values.yaml" % (name, ref))
                    node = node[part]

    def test_template_blocks_balance_and_includes_are_defined(self):
        helpers = self.templates["_helpers.tpl"]
        defined = set(re.findall(r'define "([^"]+)"', helpers))
        for name, text in self.templates.items():
            self.assertEqual(text.count("{{"), text.count("}}"), "unbalanced braces in " + name)
            actions = re.findall(r"\{\{-?\s*(\w+)", text)
            opens = sum(a in ("if", "range", "with", "define") for a in actions)
            self.assertEqual(opens, actions.count("end"), "if/range/with/define vs end in " + name)
            for inc in re.findall(r'include "([^"]+)"', text):
                self.assertIn(inc, defined, "%s includes undefined %s" % (name, inc))

    def test_deployment_probes_and_flags(self):
        d = self.templates["deployment.yaml"]
        for needle in ("path: /readyz", "path: /healthz", "grpc:", "--etcd", "--prefix",
                       "--pool", "--admin", "--http", "--shutdown-grace",
                       "terminationGracePeriodSeconds"):
            self.assertIn(needle, d)
        self.assertIn("kind: PodDisruptionBudget", self.templates["pdb.yaml"])
        self.assertIn("kind: Service", self.templates["service.yaml"])


class Manifests(unittest.TestCase):
    @unittest.skipIf(yaml is None, "python3-yaml not installed")
    def test_sidecar_registers_with_pod_ip(self):
        docs = list(yaml.safe_load_all(read(DEPLOY, "k8s", "backend-with-register-sidecar.yaml")))
        pod = docs[0]["spec"]["template"]["spec"]
        side = [c for c in pod["containers"] if "register" in c.get("args", [])]
        self.assertEqual(len(side), 1)
        args = side[0]["args"]
        self.assertTrue(args[args.index("--addr") + 1].startswith("$(POD_IP):"))
        env = {e["name"]: e for e in side[0]["env"]}
        self.assertEqual(env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP")
        self.assertEqual(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name")


class SystemdUnits(unittest.TestCase):
    def unit(self, name):
        sections, cur = {}, None
        text = read(DEPLOY, "systemd", name).replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                cur = sections.setdefault(line.strip("[]"), {})
                continue
            k, _, v = line.partition("=")
            cur.setdefault(k.strip(), []).append(v.strip())
        return sections

    def test_lbd_service(self):
        u = self.unit("lbd.service")
        self.assertEqual(set(u), {"Unit", "Service", "Install"})
        self.assertEqual(u["Service"]["Restart"], ["on-failure"])
        self.assertIn("LimitNOFILE", u["Service"])
        self.assertTrue(u["Service"]["ExecStart"][0].startswith("/usr/bin/lbd"))

    def test_lbd_service_notify_and_reload_as_upgrade(self):
        s = self.unit("lbd.service")["Service"]
        # Readiness from lbd itself; MAINPID=/READY=1 from the upgraded child.
        self.assertEqual(s["Type"], ["notify"])
        self.assertEqual(s["NotifyAccess"], ["all"])
        self.assertIn("TimeoutStartSec", s)
        # reload = SIGUSR2 to the main process = upgrade through the socket
        self.assertEqual(len(s["ExecReload"]), 1)
        self.assertRegex(s["ExecReload"][0], r"^/bin/kill -(USR2|SIGUSR2) \$MAINPID$")
        self.assertIn(s["KillMode"], (["mixed"], ["process"]))
        self.assertEqual(s["RuntimeDirectory"], ["lbd"])
        self.assertEqual(s["RuntimeDirectoryPreserve"], ["yes"])
        sock = "LBD_UPGRADE_SOCKET=/run/lbd/upgrade.sock"
        self.assertIn(sock, s.get("Environment", []))
        env = read(DEPLOY, "systemd", "lbd.env.example")
        self.assertRegex(env, r"(?m)^%s$" % re.escape(sock))
        # the state file in the unit's own state directory, kept between runs
        self.assertEqual(s["StateDirectory"], ["lbd"])
        state = "LBD_STATE_FILE=/var/lib/lbd/state.json"
        self.assertIn(state, s.get("Environment", []))
        self.assertRegex(env, r"(?m)^%s$" % re.escape(state))

    def test_register_template(self):
        u = self.unit("lbd-register@.service")
        start = u["Service"]["ExecStart"][0]
        self.assertTrue(start.startswith("/usr/bin/lbctl register"))
        for flag in ("--etcd", "--pool", "--id", "--addr", "--ttl"):
            self.assertIn(flag, start)
        self.assertIn("%i", u["Service"]["EnvironmentFile"][0])


class Scripts(unittest.TestCase):
    def test_shell_scripts_parse(self):
        scripts = [os.path.join(DEPLOY, "install-deps.sh"), os.path.join(DEPLOY, "demo.sh"),
                   os.path.join(lbtest.REPO_ROOT, "tests", "run-all.sh"),
                   os.path.join(lbtest.REPO_ROOT, ".ci", "run")]
        for s in scripts:
            p = subprocess.run(["bash", "-n", s], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, "%s: %s" % (s, p.stderr))

    def test_install_list_covers_the_build(self):
        text = read(DEPLOY, "install-deps.sh")
        for pkg in ("build-essential", "cmake", "pkg-config", "libev-dev", "libcurl4-openssl-dev",
                    "libnghttp2-dev", "libprotobuf-c-dev", "protobuf-c-compiler", "libjson-c-dev",
                    "libmicrohttpd-dev", "libssl-dev", "libsystemd-dev", "libcmocka-dev",
                    "etcd-server",
                    "etcd-client", "python3-grpcio", "clang", "libclang-rt-14-dev",
                    "libfuzzer-14-dev", "haproxy", "nginx", "libnginx-mod-stream", "wrk"):
            self.assertRegex(text, r"(?<![\w-])%s(?![\w-])" % re.escape(pkg))

    def test_dockerfile_builds_both_binaries_on_debian_12(self):
        text = read(DEPLOY, "Dockerfile")
        self.assertRegex(text, r"(?m)^FROM debian:12\b")
        self.assertIn("/usr/bin/lbd", text)
        self.assertIn("/usr/bin/lbctl", text)


if __name__ == "__main__":
    lbtest.main()
