"""Shared pieces of the chart checks: render deploy/helm/lbd with helmrender
(Helm's template engine rebuilt from Debian's Go packages, see
helmrender/main.go), validate objects against the Kubernetes models that
Debian's python3-kubernetes ships, and small helpers (label selectors,
IANA port names, the containers of a pod spec).

helmrender is found through $LB_HELMRENDER (CTest sets it to the binary
the CMake build made); otherwise it is built once into a temp dir with
`go build` in GOPATH mode from /usr/share/gocode (offline).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(REPO_ROOT, "deploy", "helm", "lbd")
CI_DIR = os.path.join(CHART, "ci")
BAD_DIR = os.path.join(HERE, "bad")
SCHEMA = os.path.join(CHART, "values.schema.json")

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "integration"))

_built = None


def helmrender():
    """Path of the helmrender binary (built on first use when not given)."""
    global _built
    given = os.environ.get("LB_HELMRENDER")
    if given:
        if not os.access(given, os.X_OK):
            raise AssertionError("LB_HELMRENDER=%s is not an executable" % given)
        return given
    if _built:
        return _built
    out_dir = tempfile.mkdtemp(prefix="helmrender-")
    out = os.path.join(out_dir, "helmrender")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="",
               GOCACHE=os.path.join(out_dir, "gocache"), CGO_ENABLED="0")
    p = subprocess.run(["go", "build", "-o", out, "."], cwd=os.path.join(HERE, "helmrender"),
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("go build of helmrender failed (golang-go and "
                             "golang-github-masterminds-sprig-dev installed?):\n" + p.stderr)
    _built = out
    return out


def ci_files():
    return sorted(os.path.join(CI_DIR, f) for f in os.listdir(CI_DIR) if f.endswith(".yaml"))


def bad_files():
    return sorted(os.path.join(BAD_DIR, f) for f in os.listdir(BAD_DIR) if f.endswith(".yaml"))


def run_render(values_files=(), sets=(), extra=()):
    """(rc, stdout, stderr) of helmrender on the chart."""
    argv = [helmrender(), CHART]
    for f in values_files:
        argv += ["-f", f]
    for s in sets:
        argv += ["--set", s]
    p = subprocess.run(argv + list(extra), capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def render(values_files=(), sets=(), extra=()):
    """The rendered objects (list of dicts, with "_source"), or AssertionError."""
    rc, out, err = run_render(values_files, sets, extra)
    if rc != 0:
        raise AssertionError("helmrender %s failed (rc %d): %s" % (" ".join(values_files), rc, err.strip()))
    docs = []
    for text in re.split(r"(?m)^---\s*$", out):
        if not text.strip():
            continue
        m = re.search(r"(?m)^# Source: (\S+)", text)
        obj = yaml.safe_load(text)
        if obj is None:
            continue
        if not isinstance(obj, dict):
            raise AssertionError("%s: a document that is not a mapping" % (m and m.group(1)))
        obj["_source"] = m.group(1) if m else "?"
        docs.append(obj)
    return docs


def notes(values_files=(), sets=()):
    rc, out, err = run_render(values_files, sets, ["--notes"])
    if rc != 0:
        raise AssertionError("NOTES.txt failed: %s" % err.strip())
    return out


def merged_values(values_files=(), sets=()):
    """The values Helm would hand the templates (defaults <- files <- sets)."""
    rc, out, err = run_render(values_files, sets, ["--values-json"])
    if rc != 0:
        raise AssertionError("helmrender --values-json failed: %s" % err.strip())
    return json.loads(out)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def chart_meta():
    return load_yaml(os.path.join(CHART, "Chart.yaml"))


# ---------------------------------------------------------------------------
# Objects


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, name_suffix=None):
    found = [d for d in by_kind(docs, kind)
             if name_suffix is None or d["metadata"]["name"].endswith(name_suffix)]
    if len(found) != 1:
        raise AssertionError("expected one %s%s, found %d" % (kind, name_suffix and " *" + name_suffix or "", len(found)))
    return found[0]


def pod_templates(docs):
    """[(object, pod spec, pod labels)] of every workload."""
    out = []
    for d in docs:
        if d.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            tpl = d["spec"]["template"]
            out.append((d, tpl["spec"], tpl.get("metadata", {}).get("labels", {})))
    return out


def containers(pod_spec):
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def register_sidecar(docs):
    """(container, volumes) of the register sidecar snippet ConfigMap, or None."""
    for d in by_kind(docs, "ConfigMap"):
        if d["metadata"]["name"].endswith("-register-sidecar"):
            return yaml.safe_load(d["data"]["container.yaml"]), yaml.safe_load(d["data"]["volumes.yaml"]) or []
    return None


def selector_matches(selector, labels):
    """A LabelSelector (matchLabels/matchExpressions) or a plain map (Service)."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        for k, v in (selector.get("matchLabels") or {}).items():
            if labels.get(k) != v:
                return False
        for e in selector.get("matchExpressions") or []:
            key, op, vals = e["key"], e["operator"], e.get("values", [])
            if op == "In" and labels.get(key) not in vals:
                return False
            if op == "NotIn" and labels.get(key) in vals:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return True
    if not selector:
        return True
    return all(labels.get(k) == v for k, v in selector.items())


_IANA = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def iana_svc_name_problem(name):
    """Why `name` is no IANA_SVC_NAME (Kubernetes' port-name rule), or None."""
    if not isinstance(name, str):
        return "not a string"
    if len(name) > 15:
        return "longer than 15"
    if not _IANA.match(name):
        return "not lowercase alphanumerics and '-', or '-' at an end"
    if "--" in name:
        return "contains '--'"
    if not re.search(r"[a-z]", name):
        return "has no letter"
    return None


def parse_duration_s(text):
    """lbd durations ("5s", "1m30s", "250ms") in seconds."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    pos = 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        if m.start() != pos:
            raise ValueError("bad duration %r" % text)
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) and text != "0":
        raise ValueError("bad duration %r" % text)
    return total


def flag_values(args, flag):
    """Every value given to `flag` in an argv list (--flag V or --flag=V)."""
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a[len(flag) + 1:])
    return out


# ---------------------------------------------------------------------------
# Kubernetes models (Debian's python3-kubernetes: generated model classes
# with openapi_types/attribute_map; no OpenAPI document is shipped).


KINDS = {
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Secret"): "V1Secret",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("batch/v1", "Job"): "V1Job",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): None,  # a CRD: SERVICE_MONITOR below
}

# Fields newer than the models in Debian 12's python3-kubernetes (client
# 22 = Kubernetes 1.22) that the chart uses, with their 1.24+ shapes.
NEWER_FIELDS = {
    "V1Probe": {"grpc": "V1GRPCAction"},
}
NEWER_MODELS = {
    # core/v1 GRPCAction (1.24 GA): port required, service optional.
    "V1GRPCAction": ({"port": "int", "service": "str"}, {"port"}),
}

# Fields typed "str" that Kubernetes takes as a quantity (number or string).
_QUANTITY_FIELDS = {"limits", "requests", "sizeLimit", "size_limit"}

# The subset of monitoring.coreos.com/v1 ServiceMonitor the chart renders,
# as JSON schema (unknown fields rejected); metadata and selector are
# checked with the Kubernetes models.
_PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer"},
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _PROM_DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _PROM_DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                            "tlsConfig": {"type": "object"},
                        }}},
            }},
    },
}


class ModelError(AssertionError):
    pass


def _k8s():
    import kubernetes.client as kc  # noqa: WPS433 - imported late: slow to import
    return kc


def _check_value(value, typ, path):
    """Checks value against a model type string; returns what the model wants."""
    kc = _k8s()
    if value is None:
        return None
    m = re.match(r"^list\[(.+)\]$", typ)
    if m:
        if not isinstance(value, list):
            raise ModelError("%s: expected a list, got %r" % (path, value))
        return [_check_value(v, m.group(1), "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    m = re.match(r"^dict\(str, (.+)\)$", typ)
    if m:
        if not isinstance(value, dict):
            raise ModelError("%s: expected a map, got %r" % (path, value))
        inner = m.group(1)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError("%s: key %r is not a string" % (path, k))
            leaf = path.rsplit(".", 1)[-1]
            if inner == "str" and leaf in _QUANTITY_FIELDS and isinstance(v, (int, float)) \
                    and not isinstance(v, bool):
                out[k] = str(v)
                continue
            out[k] = _check_value(v, inner, "%s.%s" % (path, k))
        return out
    if typ == "str":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                path.rsplit(".", 1)[-1] in _QUANTITY_FIELDS:
            return str(value)
        if not isinstance(value, str):
            raise ModelError("%s: expected a string, got %r (quote it)" % (path, value))
        return value
    if typ == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelError("%s: expected an integer, got %r" % (path, value))
        return value
    if typ == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ModelError("%s: expected a number, got %r" % (path, value))
        return value
    if typ == "bool":
        if not isinstance(value, bool):
            raise ModelError("%s: expected true/false, got %r" % (path, value))
        return value
    if typ == "object":  # IntOrString, raw JSON
        return value
    if typ in ("datetime", "date"):
        return value
    if typ in NEWER_MODELS:
        fields, required = NEWER_MODELS[typ]
        if not isinstance(value, dict):
            raise ModelError("%s: expected an object (%s), got %r" % (path, typ, value))
        for k, v in value.items():
            if k not in fields:
                raise ModelError("%s: unknown field %r in %s" % (path, k, typ))
            _check_value(v, fields[k], "%s.%s" % (path, k))
        for k in required:
            if value.get(k) is None:
                raise ModelError("%s: %s needs %r" % (path, typ, k))
        return None
    cls = getattr(kc, typ, None)
    if cls is None:
        raise ModelError("%s: no model %s in python3-kubernetes" % (path, typ))
    if not isinstance(value, dict):
        raise ModelError("%s: expected an object (%s), got %r" % (path, typ, value))
    json_to_attr = {j: a for a, j in cls.attribute_map.items()}
    newer = NEWER_FIELDS.get(typ, {})
    kwargs = {}
    for k, v in value.items():
        if k in newer:
            _check_value(v, newer[k], "%s.%s" % (path, k))
            continue
        attr = json_to_attr.get(k)
        if attr is None:
            raise ModelError("%s: unknown field %r in %s" % (path, k, typ))
        kwargs[attr] = _check_value(v, cls.openapi_types[attr], "%s.%s" % (path, k))
    cfg = kc.Configuration()
    cfg.client_side_validation = True
    try:
        return cls(local_vars_configuration=cfg, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ModelError("%s (%s): %s" % (path, typ, exc))


def validate_object(obj):
    """Raises ModelError unless obj is a valid object of a kind we know."""
    obj = {k: v for k, v in obj.items() if k != "_source"}
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in KINDS:
        raise ModelError("unknown apiVersion/kind %s/%s" % key)
    name = "%s/%s" % (key[1], (obj.get("metadata") or {}).get("name"))
    model = KINDS[key]
    if model is None:
        import jsonschema
        try:
            jsonschema.validate(obj, SERVICE_MONITOR)
        except jsonschema.ValidationError as exc:
            raise ModelError("%s: %s at %s" % (name, exc.message, "/".join(map(str, exc.path))))
        _check_value(obj["metadata"], "V1ObjectMeta", name + ".metadata")
        _check_value(obj["spec"]["selector"], "V1LabelSelector", name + ".spec.selector")
        return
    _check_value(obj, model, name)
    if not (obj.get("metadata") or {}).get("name"):
        raise ModelError("%s: metadata.name is empty" % name)
