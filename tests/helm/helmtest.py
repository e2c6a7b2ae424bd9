"""Render helm/llmq with Helm's own engine and validate what it renders.

Helm comes from the PyPI package helm-python-sdk: Helm v4's Go SDK compiled
into a C library (libhelm_c) and called through ctypes, so `render` and `lint`
here are Helm's template engine, values coalescing and values.schema.json
validation, not a re-implementation. No cluster is contacted (`lookup`
returns nothing, as in `helm template`).

Validation:
  - built-in kinds against the Kubernetes OpenAPI schemas that
    kubernetes-validate ships, in their strict variant (unknown fields fail,
    like `kubectl apply --validate=strict`);
  - KEDA and LeaderWorkerSet objects against the CRDs in ../shared/schemas,
    with the Kubernetes extensions the README names turned into JSON Schema
    (int-or-string) and every object that lists its properties closed to
    unknown fields, as the API server's strict field validation does.
"""
import copy
import functools
import json
import pathlib

import helm_python
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

from llmqtest import ROOT, SHARED

CHART = ROOT / "helm" / "llmq"
PRESETS = CHART / "presets"
RELEASE = "demo"
NAMESPACE = "llmq"
# The oldest and the newest Kubernetes minor the chart is checked against
# (Chart.yaml says >=1.27; OpenShift 4.14 is Kubernetes 1.27).
KUBE_VERSIONS = ("1.27", "1.33")

# kubernetes-validate reads each schema file from disk on every call; the
# files never change, so read each once.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)

# The API groups of the cluster a render targets (Helm's --api-versions; the
# chart reads them as .Capabilities.APIVersions). By default a cluster with
# every operator the chart can use; render(..., apis=()) is a bare cluster.
FULL_CLUSTER = ("keda.sh/v1alpha1", "leaderworkerset.x-k8s.io/v1",
                "monitoring.coreos.com/v1", "route.openshift.io/v1")


def merge(base, over):
    """Helm's coalescing of two values files: maps merge, the rest replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset(name):
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


def values(*layers):
    """Merge preset names (str) and dicts, later ones winning."""
    out = {}
    for layer in layers:
        out = merge(out, preset(layer) if isinstance(layer, str) else layer)
    return out


@functools.lru_cache(maxsize=None)
def _chart():
    return helm_python.Chart.load(str(CHART))


def _render_raw(vals, apis):
    """helm_python's Chart.render has no api_versions keyword; its C ABI
    (helm_render's options, the same Go struct) takes them."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(apis)}
    return json.loads(helm_python._native.call_string(
        "helm_render", _chart()._raw(), json.dumps(vals), json.dumps(opts)))


@functools.lru_cache(maxsize=None)
def _render_cached(key, apis):
    manifests = _render_raw(json.loads(key), apis)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs, manifests.get("llmq/templates/NOTES.txt", "")


def render(vals=None, apis=FULL_CLUSTER):
    """Render with these values; returns the list of objects (deep copies)."""
    docs, _ = _render_cached(json.dumps(vals or {}, sort_keys=True), tuple(apis))
    return copy.deepcopy(docs)


def notes(vals=None, apis=FULL_CLUSTER):
    return _render_cached(json.dumps(vals or {}, sort_keys=True), tuple(apis))[1]


def render_error(vals, apis=FULL_CLUSTER):
    """The message Helm refuses these values with (None when it renders)."""
    try:
        _render_raw(vals, tuple(apis))
    except helm_python.HelmError as e:
        return str(e)
    return None


def lint(vals=None):
    return helm_python.lint(str(CHART), vals or {}, strict=True, namespace=NAMESPACE)


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name=None):
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_templates(docs):
    """(object, role, pod template) of every workload, LeaderWorkerSet included."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((d, "pod", d["spec"]["template"]))
        elif d["kind"] == "LeaderWorkerSet":
            lwt = d["spec"]["leaderWorkerTemplate"]
            if "leaderTemplate" in lwt:
                out.append((d, "leader", lwt["leaderTemplate"]))
            out.append((d, "worker", lwt["workerTemplate"]))
    return out


def containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def arg(container, flag):
    """Value following `flag` in a container's args (None when absent)."""
    args = container.get("args", [])
    return args[args.index(flag) + 1] if flag in args else None


def env(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e
    return None


# ------------------------------------------------------------ schemas

CRD_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
}
# Kinds whose schemas are in neither source; tests check their shape by hand.
NO_SCHEMA = {("route.openshift.io/v1", "Route"), ("monitoring.coreos.com/v1", "ServiceMonitor")}


def _structural(node):
    """A CRD's openAPIV3Schema as plain JSON Schema (see the module doc)."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _structural(v) for k, v in node.items()
           if k not in ("description",) and not k.startswith("x-kubernetes-")}
    for key in ("properties", "patternProperties", "definitions"):
        if key in node:  # maps of names, not schemas
            out[key] = {n: _structural(s) for n, s in node[key].items()}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(api_version, kind):
    if SHARED is None:
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the LWS CRD is 1.3 MB
    crd = yaml.load((SHARED / "schemas" / CRD_FILES[(api_version, kind)]).read_text(), Loader=loader)
    version = api_version.split("/")[1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = _structural(v["schema"]["openAPIV3Schema"])
            return jsonschema.Draft7Validator(schema)
    raise AssertionError(f"{kind}: the CRD serves no version {version}")


def validate(obj):
    """Problems with one rendered object, as strings ([] when valid)."""
    key = (obj["apiVersion"], obj["kind"])
    name = f"{obj['kind']}/{obj['metadata'].get('name')}"
    if key in NO_SCHEMA:
        return []
    if key in CRD_FILES:
        v = crd_validator(*key)
        if v is None:
            return []
        return [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in v.iter_errors(obj)]
    problems = []
    for kube in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name} (Kubernetes {kube}): {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: no Kubernetes {kube} schema for {key}")
    return problems
