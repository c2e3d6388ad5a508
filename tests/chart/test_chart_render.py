#!/usr/bin/python3
"""The lbd chart rendered with helmrender (Helm's template engine) for the
defaults and every ci/*.yaml, each object checked against the Kubernetes
models of python3-kubernetes (unknown fields are errors), then the
invariants the chart promises:

- no Service, PodDisruptionBudget, NetworkPolicy, anti-affinity or spread
  constraint selects the policy hook Job's pods; each selects lbd's pods;
- port names are valid IANA_SVC_NAMEs, unique, stable when pools are
  reordered, and every Service targetPort names a container port;
- /metrics, /readyz and the admin port are on no NodePort/LoadBalancer
  Service; a ClusterIP metrics Service carries them; a ServiceMonitor
  selects that Service only;
- a PodDisruptionBudget exists exactly when enabled with replicas > 1;
- every pod spec (Deployment, Job, register sidecar): seccompProfile
  RuntimeDefault, automountServiceAccountToken false, runAsNonRoot,
  allowPrivilegeEscalation false, drop ALL, NET_BIND_SERVICE only for a
  pool port below 1024, read-only root;
- terminationGracePeriodSeconds >= --shutdown-delay + --shutdown-grace +
  5 s, and equals the values' delay + grace + margin;
- the image tag is the chart's appVersion unless the values set one;
- the hook Job and the register sidecar get etcd's TLS and login when
  lbd does; every file an argument names lies under a mount;
- the register sidecar passes register.zone as --zone (none when empty)
  and each register.meta entry as --meta KEY=VALUE; the schema takes the
  zones lbd takes and no other; a ci file covers a zoned lbd and sidecar;
- the admin API is on loopback unless a token protects it;
- probes have timeouts, a startup probe exists, NOTES.txt renders;
- --state-file lies on an emptyDir of its own, and is absent when disabled.
"""

import os
import re
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chartlib  # noqa: E402
from chartlib import flag_values, iana_svc_name_problem, selector_matches  # noqa: E402

DEFAULTS = "(values.yaml + --set image.repository)"


def cases():
    """[(label, values files, sets)]: the defaults and every ci file."""
    out = [(DEFAULTS, [], ["image.repository=registry.example.com/lbd"])]
    for f in chartlib.ci_files():
        out.append((os.path.basename(f), [f], []))
    return out


class Rendered:
    """One rendering with the values that produced it."""

    def __init__(self, label, files, sets):
        self.label = label
        self.values = chartlib.merged_values(files, sets)
        self.docs = chartlib.render(files, sets)
        self.notes = chartlib.notes(files, sets)
        self.deployment = chartlib.one(self.docs, "Deployment")
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.pod_labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        self.lbd = [c for c in self.pod["containers"] if c["name"] == "lbd"][0]
        self.jobs = chartlib.by_kind(self.docs, "Job")
        self.sidecar = chartlib.register_sidecar(self.docs)


class ChartRenders(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.renders = [Rendered(*c) for c in cases()]

    # -- objects --------------------------------------------------------

    def test_objects_validate_against_kubernetes_models(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                kinds = set()
                for d in r.docs:
                    chartlib.validate_object(d)
                    kinds.add(d["kind"])
                    self.assertTrue(d["metadata"]["name"])
                    self.assertLessEqual(len(d["metadata"]["name"]), 63, d["metadata"]["name"])
                self.assertLessEqual({"Deployment", "Service", "ServiceAccount", "ConfigMap"}, kinds)
                if r.sidecar:
                    container, volumes = r.sidecar
                    chartlib._check_value(container, "V1Container", "register-sidecar")
                    chartlib._check_value(volumes, "list[V1Volume]", "register-sidecar volumes")

    def test_names_are_unique_per_kind(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                seen = set()
                for d in r.docs:
                    key = (d["kind"], d["metadata"]["name"])
                    self.assertNotIn(key, seen)
                    seen.add(key)

    # -- selectors ------------------------------------------------------

    def selectors(self, r):
        """(what, selector) of everything that picks lbd pods."""
        out = []
        for s in chartlib.by_kind(r.docs, "Service"):
            out.append(("Service %s" % s["metadata"]["name"], s["spec"]["selector"]))
        for p in chartlib.by_kind(r.docs, "PodDisruptionBudget"):
            out.append(("PDB", p["spec"]["selector"]))
        for n in chartlib.by_kind(r.docs, "NetworkPolicy"):
            out.append(("NetworkPolicy", n["spec"]["podSelector"]))
        aff = r.pod.get("affinity", {}).get("podAntiAffinity", {})
        for term in aff.get("preferredDuringSchedulingIgnoredDuringExecution", []):
            out.append(("anti-affinity", term["podAffinityTerm"]["labelSelector"]))
        for term in aff.get("requiredDuringSchedulingIgnoredDuringExecution", []):
            out.append(("anti-affinity", term["labelSelector"]))
        for t in r.pod.get("topologySpreadConstraints", []):
            out.append(("topologySpreadConstraint", t["labelSelector"]))
        return out

    def test_selectors_pick_lbd_and_never_the_hook_job(self):
        job_seen = False
        for r in self.renders:
            with self.subTest(values=r.label):
                self.assertTrue(selector_matches(r.deployment["spec"]["selector"], r.pod_labels))
                for what, sel in self.selectors(r):
                    self.assertTrue(selector_matches(sel, r.pod_labels), "%s misses lbd's pods" % what)
                    for job in r.jobs:
                        job_seen = True
                        labels = job["spec"]["template"]["metadata"]["labels"]
                        self.assertFalse(selector_matches(sel, labels), "%s selects the hook Job" % what)
                for job in r.jobs:
                    labels = job["spec"]["template"]["metadata"]["labels"]
                    self.assertFalse(selector_matches(r.deployment["spec"]["selector"], labels))
        self.assertTrue(job_seen, "no ci file renders the hook Job")

    def test_service_monitor_selects_the_metrics_service_only(self):
        monitored = 0
        for r in self.renders:
            with self.subTest(values=r.label):
                for sm in chartlib.by_kind(r.docs, "ServiceMonitor"):
                    monitored += 1
                    picked = [s["metadata"]["name"] for s in chartlib.by_kind(r.docs, "Service")
                              if selector_matches(sm["spec"]["selector"], s["metadata"]["labels"])]
                    self.assertEqual(len(picked), 1, picked)
                    self.assertTrue(picked[0].endswith("-metrics"), picked)
                    svc = chartlib.one(r.docs, "Service", "-metrics")
                    names = [p["name"] for p in svc["spec"]["ports"]]
                    for ep in sm["spec"]["endpoints"]:
                        self.assertIn(ep["port"], names)
                        self.assertEqual(ep["path"], "/metrics")
                    self.assertNotIn("prometheus.io/scrape",
                                     r.deployment["spec"]["template"]["metadata"].get("annotations", {}),
                                     "scraped twice: annotations and ServiceMonitor")
        self.assertGreater(monitored, 0, "no ci file enables the ServiceMonitor")

    # -- ports ----------------------------------------------------------

    def test_port_names_valid_unique_and_resolved(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                cports = r.lbd["ports"]
                names = [p["name"] for p in cports]
                self.assertEqual(len(names), len(set(names)), names)
                for n in names:
                    self.assertIsNone(iana_svc_name_problem(n), "%s: %s" % (n, iana_svc_name_problem(n)))
                by_name = {p["name"]: p["containerPort"] for p in cports}
                numbers = [p["containerPort"] for p in cports]
                self.assertEqual(len(numbers), len(set(numbers)))
                for s in chartlib.by_kind(r.docs, "Service"):
                    snames = [p["name"] for p in s["spec"]["ports"]]
                    self.assertEqual(len(snames), len(set(snames)), snames)
                    for p in s["spec"]["ports"]:
                        self.assertIsNone(iana_svc_name_problem(p["name"]))
                        tp = p["targetPort"]
                        if isinstance(tp, str):
                            self.assertIn(tp, by_name, "Service %s targets no port %s" % (s["metadata"]["name"], tp))
                        else:
                            self.assertIn(tp, numbers)
                # every pool has its port, by its number, on the pools' Service
                pools = r.values["pools"]
                main = chartlib.one(r.docs, "Service", r.deployment["metadata"]["name"])
                self.assertEqual(len(main["spec"]["ports"]), len(pools))
                for pool, sp in zip(pools, main["spec"]["ports"]):
                    self.assertEqual(sp["port"], pool["servicePort"])
                    self.assertEqual(by_name[sp["targetPort"]], pool["port"])

    def test_port_names_for_awkward_pool_names(self):
        f = os.path.join(chartlib.CI_DIR, "awkward-pool-names-values.yaml")
        values = chartlib.load_yaml(f)
        docs = chartlib.render([f])
        lbd = chartlib.one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        names = {p["containerPort"]: p["name"] for p in lbd["ports"]}
        by_pool = {p["name"]: names[p["port"]] for p in values["pools"]}
        self.assertEqual(by_pool["authentication"], "authentication")
        self.assertEqual(by_pool["authentication2"], "authentication2")
        self.assertEqual(by_pool["web"], "web")
        self.assertNotEqual(by_pool["http"], "http")  # the chart's own port keeps "http"
        self.assertTrue(by_pool["my_db"].startswith("my-db-"))
        self.assertTrue(by_pool["Web"].startswith("web-"))
        self.assertNotEqual(by_pool["authentication-service-east"], by_pool["authentication-service-west"])
        # stable: the same names whatever the order of the pools
        rev = dict(values, pools=list(reversed(values["pools"])))
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
            yaml.safe_dump(rev, tmp)
            tmp.flush()
            docs2 = chartlib.render([tmp.name])
        rev = rev["pools"]
        lbd2 = chartlib.one(docs2, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        names2 = {p["containerPort"]: p["name"] for p in lbd2["ports"]}
        self.assertEqual({p["name"]: names2[p["port"]] for p in rev}, by_pool)

    def test_operator_ports_never_on_an_external_service(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                ports = {p["name"]: p["containerPort"] for p in r.lbd["ports"]}
                private = {ports["http"], ports["admin"], "http", "admin"}
                for s in chartlib.by_kind(r.docs, "Service"):
                    for p in s["spec"]["ports"]:
                        if p["targetPort"] in private:
                            self.assertEqual(s["spec"].get("type", "ClusterIP"), "ClusterIP",
                                             "%s exposes %s" % (s["metadata"]["name"], p["targetPort"]))
                main = chartlib.one(r.docs, "Service", r.deployment["metadata"]["name"])
                for p in main["spec"]["ports"]:
                    self.assertNotIn(p["targetPort"], private, "the pools' Service carries %s" % p)
                metrics = chartlib.one(r.docs, "Service", "-metrics")
                self.assertEqual(metrics["spec"]["type"], "ClusterIP")
                self.assertEqual([p["targetPort"] for p in metrics["spec"]["ports"]], ["http"])

    def test_loadbalancer_case_is_covered(self):
        types = {chartlib.one(r.docs, "Service", r.deployment["metadata"]["name"])["spec"]["type"]
                 for r in self.renders}
        self.assertIn("LoadBalancer", types)

    # -- disruption budget ------------------------------------------------

    def test_pdb_only_with_more_than_one_replica(self):
        counts = set()
        for r in self.renders:
            with self.subTest(values=r.label):
                replicas = r.deployment["spec"]["replicas"]
                counts.add(replicas)
                pdbs = chartlib.by_kind(r.docs, "PodDisruptionBudget")
                want = r.values["podDisruptionBudget"]["enabled"] and replicas > 1
                self.assertEqual(len(pdbs), 1 if want else 0)
                for p in pdbs:
                    spec = p["spec"]
                    self.assertEqual(len({"minAvailable", "maxUnavailable"} & set(spec)), 1)
                    if isinstance(spec.get("minAvailable"), int):
                        self.assertLess(spec["minAvailable"], replicas)
                    if isinstance(spec.get("maxUnavailable"), int):
                        self.assertGreaterEqual(spec["maxUnavailable"], 1)
        self.assertLessEqual({1, 3}, counts)

    # -- pod security -------------------------------------------------------

    def pod_specs(self, r):
        """(what, pod spec or None, containers) of every pod the chart makes
        or hands out (the sidecar goes into someone else's pod)."""
        out = [("Deployment", r.pod, chartlib.containers(r.pod))]
        for j in r.jobs:
            spec = j["spec"]["template"]["spec"]
            out.append(("Job", spec, chartlib.containers(spec)))
        if r.sidecar:
            out.append(("register sidecar", None, [r.sidecar[0]]))
        return out

    def test_restricted_pod_security(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                low = min(p["port"] for p in r.values["pools"]) < 1024
                for what, spec, ctrs in self.pod_specs(r):
                    psc = (spec or {}).get("securityContext", {})
                    if spec is not None:
                        self.assertIs(spec.get("automountServiceAccountToken"), False, what)
                        self.assertIs(psc.get("runAsNonRoot"), True, what)
                        self.assertEqual(psc.get("seccompProfile"), {"type": "RuntimeDefault"}, what)
                        self.assertFalse(spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"))
                        for v in spec.get("volumes", []):
                            self.assertNotIn("hostPath", v, what)
                        sysctls = {s["name"]: s["value"] for s in psc.get("sysctls", [])}
                        if what == "Deployment" and low:
                            self.assertEqual(sysctls.get("net.ipv4.ip_unprivileged_port_start"),
                                             str(min(p["port"] for p in r.values["pools"])))
                        self.assertLessEqual(set(sysctls), {"net.ipv4.ip_unprivileged_port_start"})
                    for c in ctrs:
                        sc = c.get("securityContext", {})
                        self.assertIs(sc.get("allowPrivilegeEscalation"), False, what)
                        self.assertIs(sc.get("runAsNonRoot"), True, what)
                        self.assertFalse(sc.get("privileged", False), what)
                        self.assertIs(sc.get("readOnlyRootFilesystem"), True, what)
                        caps = sc.get("capabilities", {})
                        self.assertEqual(caps.get("drop"), ["ALL"], what)
                        added = caps.get("add", [])
                        if what == "Deployment" and low:
                            self.assertEqual(added, ["NET_BIND_SERVICE"])
                        else:
                            self.assertEqual(added, [], "%s adds %s without a port < 1024" % (what, added))
                        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                            if probe in c:
                                self.assertIn("timeoutSeconds", c[probe])
                        self.assertIn("resources", c)
                        self.assertIn("limits", c["resources"])

    def test_service_account_has_no_token(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                for sa in chartlib.by_kind(r.docs, "ServiceAccount"):
                    self.assertIs(sa.get("automountServiceAccountToken"), False)
                self.assertEqual(r.pod["serviceAccountName"],
                                 chartlib.one(r.docs, "ServiceAccount")["metadata"]["name"])

    # -- shutdown -------------------------------------------------------------

    def test_termination_grace_covers_delay_and_grace(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                args = r.lbd["args"]
                delay = chartlib.parse_duration_s(flag_values(args, "--shutdown-delay")[-1])
                grace = chartlib.parse_duration_s(flag_values(args, "--shutdown-grace")[-1])
                tgps = r.pod["terminationGracePeriodSeconds"]
                self.assertGreaterEqual(tgps, delay + grace + 5)
                sd = r.values["shutdown"]
                self.assertEqual((delay, grace), (sd["delaySeconds"], sd["graceSeconds"]))
                self.assertEqual(tgps, sd["delaySeconds"] + sd["graceSeconds"] + sd["marginSeconds"])

    # -- image ---------------------------------------------------------------

    def images(self, r):
        out = [c["image"] for _, _, ctrs in self.pod_specs(r) for c in ctrs]
        self.assertTrue(out)
        return out

    def test_image_tag_defaults_to_app_version(self):
        app = str(chartlib.chart_meta()["appVersion"])
        for r in self.renders:
            with self.subTest(values=r.label):
                img = r.values["image"]
                for ref in self.images(r):
                    self.assertTrue(ref.startswith(img["repository"]), ref)
                    if img.get("digest"):
                        self.assertEqual(ref, "%s@%s" % (img["repository"], img["digest"]))
                    elif img.get("tag"):
                        self.assertEqual(ref, "%s:%s" % (img["repository"], img["tag"]))
                    else:
                        self.assertEqual(ref, "%s:%s" % (img["repository"], app))
                    self.assertNotEqual(ref.split(":")[0], "lbd", "an image nobody publishes")

    # -- etcd settings reach every etcd client --------------------------------

    def mounts(self, container):
        return [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts", [])]

    def assert_paths_mounted(self, what, container, values):
        for v in values:
            if isinstance(v, str) and v.startswith("/etc/"):
                self.assertTrue(any(v.startswith(m) for m in self.mounts(container)),
                                "%s names %s, which no volume mounts" % (what, v))

    def test_etcd_tls_and_login_reach_lbd_the_job_and_the_sidecar(self):
        tls_users_job = False
        for r in self.renders:
            with self.subTest(values=r.label):
                etcd = r.values["etcd"]
                lbd_args = r.lbd["args"]
                self.assertEqual(flag_values(lbd_args, "--etcd"), [",".join(etcd["endpoints"])])
                self.assertEqual(flag_values(lbd_args, "--prefix"), [etcd["prefix"]])
                self.assert_paths_mounted("lbd", r.lbd, lbd_args)
                want_ca = bool(etcd["tlsSecret"])
                want_user = bool(etcd["userSecret"])
                self.assertEqual(bool(flag_values(lbd_args, "--etcd-ca")), want_ca)
                self.assertEqual(bool(flag_values(lbd_args, "--etcd-user-file")), want_user)
                secrets = {v["name"]: v["secret"]["secretName"] for v in r.pod.get("volumes", []) if "secret" in v}
                if want_ca:
                    self.assertIn(etcd["tlsSecret"], secrets.values())
                if want_user:
                    self.assertIn(etcd["userSecret"], secrets.values())
                for job in r.jobs:
                    spec = job["spec"]["template"]["spec"]
                    c = spec["containers"][0]
                    env = {e["name"]: e.get("value") for e in c.get("env", [])}
                    script = c["args"][0]
                    self.assertEqual(env["LBD_ETCD"], ",".join(etcd["endpoints"]))
                    self.assertEqual(env["LBD_PREFIX"], etcd["prefix"])
                    self.assertEqual("LBD_ETCD_CA" in env, want_ca)
                    self.assertEqual("LBD_ETCD_USER_FILE" in env, want_user)
                    self.assert_paths_mounted("the hook Job", c, env.values())
                    jsecrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
                    if want_ca:
                        self.assertIn(etcd["tlsSecret"], jsecrets)
                        self.assertIn("--cacert \"$LBD_ETCD_CA\"", script)
                    if want_user:
                        self.assertIn(etcd["userSecret"], jsecrets)
                        self.assertIn("/v3/auth/authenticate", script)
                    tls_users_job = tls_users_job or (want_ca and want_user)
                if r.sidecar:
                    c, vols = r.sidecar
                    args = c["args"]
                    self.assertEqual(flag_values(args, "--etcd"), [",".join(etcd["endpoints"])])
                    self.assertEqual(flag_values(args, "--prefix"), [etcd["prefix"]])
                    self.assertEqual(bool(flag_values(args, "--etcd-ca")), want_ca)
                    self.assertEqual(bool(flag_values(args, "--etcd-user-file")), want_user)
                    self.assert_paths_mounted("the register sidecar", c, args)
                    mounted = {m["name"] for m in c.get("volumeMounts", [])}
                    self.assertEqual(mounted, {v["name"] for v in vols})
        self.assertTrue(tls_users_job, "no ci file renders the hook Job with TLS and users")

    def test_register_sidecar_checks_the_backend(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                if not r.sidecar:
                    continue
                c, _ = r.sidecar
                args = c["args"]
                self.assertEqual(args[0], "register")
                reg = r.values["register"]
                pool = reg["pool"] or r.values["pools"][0]["name"]
                self.assertEqual(flag_values(args, "--pool"), [pool])
                self.assertEqual(flag_values(args, "--addr"), ["$(POD_IP):%d" % reg["port"]])
                self.assertEqual(flag_values(args, "--id"), ["$(POD_NAME)"])
                if reg["check"]:
                    self.assertEqual(flag_values(args, "--check"), [reg["check"]])
                    self.assertEqual(flag_values(args, "--check-interval"), [reg["checkInterval"]])
                env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
                self.assertEqual(env, {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"})

    def test_register_sidecar_zone_and_meta(self):
        zoned = 0
        for r in self.renders:
            with self.subTest(values=r.label):
                if not r.sidecar:
                    continue
                args = r.sidecar[0]["args"]
                reg = r.values["register"]
                self.assertEqual(flag_values(args, "--zone"), [reg["zone"]] if reg["zone"] else [])
                self.assertEqual(sorted(flag_values(args, "--meta")),
                                 sorted("%s=%s" % kv for kv in reg["meta"].items()))
                if reg["zone"]:
                    zoned += 1
                    # the lbd of the same values runs in that zone, and a pool keeps traffic there
                    self.assertEqual(flag_values(r.lbd["args"], "--zone"), [reg["zone"]])
                    self.assertTrue(any((p.get("policy") or {}).get("zone_affinity")
                                        for p in r.values["pools"]))
        self.assertGreater(zoned, 0, "no ci file sets register.zone")

    def test_register_zone_empty_or_set_on_the_command_line(self):
        sets = ["image.repository=registry.example.com/lbd"]
        c, _ = chartlib.register_sidecar(chartlib.render([], sets + ["register.zone="]))
        self.assertEqual(flag_values(c["args"], "--zone"), [])
        self.assertEqual(flag_values(c["args"], "--meta"), [])
        c, _ = chartlib.register_sidecar(chartlib.render(
            [], sets + ["register.zone=us-east-1a", "register.meta.team=web"]))
        self.assertEqual(flag_values(c["args"], "--zone"), ["us-east-1a"])
        self.assertEqual(flag_values(c["args"], "--meta"), ["team=web"])

    def test_register_zone_schema_matches_lbd(self):
        """values.schema.json's register.zone takes what lbd's backend value
        reader takes (up to 63 of [A-Za-z0-9._:-], or empty for none)."""
        import json
        with open(chartlib.SCHEMA) as f:
            reg = json.load(f)["properties"]["register"]["properties"]
        zone = re.compile(reg["zone"]["pattern"])
        for ok in ("", "a", "eu-west-1a", "A.b_c:d-9", "z" * 63):
            self.assertTrue(zone.search(ok), ok)
        for bad in ("a b", "eu/west", "z\u00e9", "a,b", "$(NODE_ZONE)", "z" * 64):
            self.assertFalse(zone.search(bad), bad)
        key = re.compile(reg["meta"]["propertyNames"]["pattern"])
        self.assertTrue(key.search("team"))
        self.assertFalse(key.search("a=b"))
        self.assertFalse(key.search(""))

    # -- admin API ------------------------------------------------------------

    def test_admin_on_loopback_unless_a_token_protects_it(self):
        beyond = 0
        for r in self.renders:
            with self.subTest(values=r.label):
                args = r.lbd["args"]
                admin = flag_values(args, "--admin")[-1]
                host = admin.rsplit(":", 1)[0].strip("[]")
                loopback = host.startswith("127.") or host in ("::1", "localhost")
                token = flag_values(args, "--admin-token-file")
                if not loopback:
                    beyond += 1
                    self.assertTrue(token, "admin API on %s without a token" % admin)
                self.assert_paths_mounted("lbd", r.lbd, token)
                if loopback:
                    self.assertIn("port-forward", r.notes)
                http = flag_values(args, "--http")[-1].rsplit(":", 1)[0].strip("[]")
                self.assertFalse(http.startswith("127."), "kubelet cannot reach /readyz on loopback")
        self.assertGreater(beyond, 0, "no ci file opens the admin API with a token")

    def test_probes(self):
        grpc = 0
        for r in self.renders:
            with self.subTest(values=r.label):
                c = r.lbd
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    self.assertIn(probe, c)
                    self.assertGreaterEqual(c[probe]["timeoutSeconds"], 1)
                self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
                if "grpc" in c["livenessProbe"]:
                    grpc += 1
                    admin = flag_values(c["args"], "--admin")[-1]
                    self.assertFalse(admin.startswith("127."))
                    self.assertEqual(c["livenessProbe"]["grpc"]["port"],
                                     int(admin.rsplit(":", 1)[1]))
                    self.assertFalse(flag_values(c["args"], "--admin-tls-cert"))
        self.assertGreater(grpc, 0, "no ci file uses gRPC probes")

    # -- pools ------------------------------------------------------------------

    def test_pool_flags_follow_the_values(self):
        proxied = 0
        for r in self.renders:
            with self.subTest(values=r.label):
                flags = flag_values(r.lbd["args"], "--pool")
                want = []
                for p in r.values["pools"]:
                    f = "%s=%s:%d" % (p["name"], r.values["listenAddress"], p["port"])
                    if p.get("acceptProxy"):
                        f += ",accept-proxy"
                        proxied += 1
                    want.append(f)
                self.assertEqual(flags, want)
        self.assertGreater(proxied, 0, "no ci file has an accept-proxy pool")

    def test_policy_configmap_holds_each_policy(self):
        import json
        for r in self.renders:
            with self.subTest(values=r.label):
                with_policy = [p for p in r.values["pools"] if p.get("policy")]
                cms = [d for d in chartlib.by_kind(r.docs, "ConfigMap") if d["metadata"]["name"].endswith("-policy")]
                self.assertEqual(len(cms), 1 if with_policy else 0)
                self.assertEqual(len(r.jobs), 1 if with_policy else 0)
                if not with_policy:
                    continue
                data = cms[0]["data"]
                got = {data["pool-%d.name" % i]: json.loads(data["pool-%d.json" % i])
                       for i in range(len(with_policy))}
                self.assertEqual(got, {p["name"]: p["policy"] for p in with_policy})
                for key in data:
                    self.assertRegex(key, r"^[-._a-zA-Z0-9]+$")

    # -- extra volumes -------------------------------------------------------------

    def test_extra_volumes_and_mounts(self):
        seen = 0
        for r in self.renders:
            with self.subTest(values=r.label):
                extra = r.values["extraVolumes"]
                if not extra:
                    continue
                seen += 1
                names = [v["name"] for v in r.pod["volumes"]]
                self.assertEqual(len(names), len(set(names)))
                for v in extra:
                    self.assertIn(v, r.pod["volumes"])
                for m in r.values["extraVolumeMounts"]:
                    self.assertIn(m, r.lbd["volumeMounts"])
                    self.assertIn(m["name"], names)
        self.assertGreater(seen, 0)

    def test_state_file_on_an_empty_dir(self):
        """--state-file lies on a writable emptyDir of its own (the root is read-only),
        and is not given when stateFile.enabled is false."""
        states = set()
        for r in self.renders:
            with self.subTest(values=r.label):
                paths = flag_values(r.lbd["args"], "--state-file")
                enabled = r.values["stateFile"]["enabled"]
                states.add(enabled)
                if not enabled:
                    self.assertEqual(paths, [])
                    self.assertNotIn("state", [v["name"] for v in r.pod.get("volumes", [])])
                    continue
                self.assertEqual(len(paths), 1)
                mounts = [m for m in r.lbd["volumeMounts"]
                          if paths[0].startswith(m["mountPath"].rstrip("/") + "/")]
                self.assertEqual(len(mounts), 1, r.lbd["volumeMounts"])
                self.assertFalse(mounts[0].get("readOnly", False))
                volume = [v for v in r.pod["volumes"] if v["name"] == mounts[0]["name"]]
                self.assertEqual(len(volume), 1)
                self.assertIn("emptyDir", volume[0])
                self.assertEqual(volume[0]["emptyDir"]["sizeLimit"],
                                 r.values["stateFile"]["sizeLimit"])
        self.assertEqual(states, {True, False}, "a ci file covers stateFile.enabled: false")

    # -- NOTES -------------------------------------------------------------------

    def test_notes(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                self.assertNotIn("<no value>", r.notes)
                self.assertNotIn("%!", r.notes)
                for p in r.values["pools"]:
                    self.assertIn(str(p["name"]), r.notes)

    def test_no_go_formatting_leaks(self):
        for r in self.renders:
            with self.subTest(values=r.label):
                text = repr([{k: v for k, v in d.items() if k != "_source"} for d in r.docs])
                self.assertIsNone(re.search(r"%!|<nil>|<no value>|map\[", text), r.label)


if __name__ == "__main__":
    unittest.main(verbosity=2)
