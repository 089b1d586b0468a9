"""Every manifest in deploy/ checked the way a cluster would check it, without a cluster:

- built-in kinds (Secret, ServiceAccount, ConfigMap, HorizontalPodAutoscaler) against the Kubernetes OpenAPI schemas
  that the `kubernetes-validate` package ships, in their strict form (unknown fields refused, as `kubectl apply`'s
  default server-side strict field validation does);
- KEDA's ScaledObject and prometheus-operator's PodMonitor and ServiceMonitor against their real CRD
  `openAPIV3Schema`, vendored in tests/schemas/ (see its README), with unknown fields refused where the apiserver
  would prune them, and their `metadata` against the Kubernetes ObjectMeta schema;
- KServe's InferenceService and ClusterServingRuntime against the KServe Python SDK's models (the `kserve` package:
  generated from the same Go API types as KServe's CRDs), field by field, with every Kubernetes type inside them
  (containers, probes, metadata, ...) checked against the strict Kubernetes schema;
- every container argument is one the binary accepts;
- the PodMonitor selects the runtime's pods, and the ServiceMonitor the Service KServe makes for a RawDeployment
  predictor (its labels and ports as KServe's controller builds them) and none of the Services Knative makes;
- every metric that an autoscaler, the prometheus-adapter rule, the monitors' relabeling or the Grafana dashboard
  queries is one that a live server's /metrics exposes after HTTP and gRPC traffic, with the labels the query uses.
Nothing here reaches the network: the schemas are local files and the server listens on 127.0.0.1."""
import ast
import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import urllib.error
import urllib.request

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from server import ROOT, Server, binary

DEPLOY = os.path.join(ROOT, "deploy")
SCHEMAS = os.path.join(ROOT, "tests", "schemas")
# The Kubernetes release the built-in kinds are checked against (kubernetes-validate ships one schema set per minor).
KUBERNETES_VERSION = "1.35.0"
STRICT_DIR = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
# Labels Prometheus attaches to every series it scrapes through deploy/podmonitor.yaml or deploy/servicemonitor.yaml
# (prometheus-operator adds namespace, pod, container, job and endpoint for both, and service for a ServiceMonitor;
# Prometheus adds instance). Queries may use them although the server's own /metrics does not carry them.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint", "service"}


def documents():
    """(file name, document) for every YAML document in deploy/."""
    docs = []
    for name in sorted(os.listdir(DEPLOY)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(DEPLOY, name)) as f:
                docs.extend((name, d) for d in yaml.safe_load_all(f) if d)
    return docs


def doc_id(item):
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


def of_kind(kind):
    return [d for _, d in documents() if d["kind"] == kind]


# ---------------------------------------------------------------------------------------------------------------------
# Schemas


@functools.lru_cache(maxsize=None)
def kubernetes_registry():
    definitions = schema_contents(f"{STRICT_DIR}/_definitions.json", KUBERNETES_VERSION)
    return Resource.from_contents(definitions) @ Registry(), definitions["$defs"]


def kubernetes_definition_errors(value, definition):
    """Errors of `value` against one strict Kubernetes definition, e.g. io.k8s.api.core.v1.Container."""
    registry, _ = kubernetes_registry()
    ref = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{definition}"}
    validator = jsonschema.Draft202012Validator(ref, registry=registry)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


@functools.lru_cache(maxsize=None)
def builtin_schema(kind, api_version):
    # kubernetes-validate's file naming: <kind>-<group without domain>-<version>.json, <kind>-<version>.json for core.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return schema_contents(f"{STRICT_DIR}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION)


def builtin_errors(doc):
    registry, _ = kubernetes_registry()
    validator = jsonschema.Draft202012Validator(builtin_schema(doc["kind"], doc["apiVersion"]), registry=registry)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def structural(schema):
    """A CRD's structural schema as JSON Schema, as strict as the apiserver: an object with `properties` takes no
    other field unless it says `x-kubernetes-preserve-unknown-fields` (the apiserver prunes such fields, and rejects
    them under strict field validation); `nullable` admits null."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(filename, version):
    with open(os.path.join(SCHEMAS, filename)) as f:
        crd = yaml.safe_load(f)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = structural(served["schema"]["openAPIV3Schema"])
    return crd["spec"]["group"], crd["spec"]["names"]["kind"], jsonschema.Draft7Validator(schema)


CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("keda.sh_scaledobjects.yaml", "v1alpha1"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("monitoring.coreos.com_podmonitors.yaml", "v1"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("monitoring.coreos.com_servicemonitors.yaml", "v1"),
}


def crd_errors(doc):
    filename, version = CRDS[(doc["apiVersion"], doc["kind"])]
    group, kind, validator = crd_validator(filename, version)
    assert (doc["apiVersion"], doc["kind"]) == (f"{group}/{version}", kind)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    # The apiserver checks every custom resource's metadata as an ObjectMeta.
    object_meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    errors += [f"metadata.{e}" for e in kubernetes_definition_errors(doc["metadata"], object_meta)]
    return errors


KSERVE = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}


@functools.lru_cache(maxsize=None)
def kserve_sdk_types():
    """{class: (openapi_types, attribute_map, required attributes)} of the KServe SDK's models, read from the
    installed package's source rather than imported: importing `kserve` registers its gRPC protos in the process
    next to tritonclient's, and the other end-to-end tests in this process use tritonclient's."""
    spec = importlib.util.find_spec("kserve")
    models = os.path.join(spec.submodule_search_locations[0], "models")
    types = {}
    for name in sorted(os.listdir(models)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(models, name)) as f:
            source = f.read()
        for node in ast.parse(source).body:
            if not isinstance(node, ast.ClassDef):
                continue
            found = {}
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                    if stmt.targets[0].id in ("openapi_types", "attribute_map"):
                        found[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            if len(found) == 2:
                # The generated setters refuse None for a required field with this message.
                body = ast.get_source_segment(source, node)
                required = set(re.findall(r"Invalid value for `(\w+)`, must not be `None`", body))
                types[node.name] = (found["openapi_types"], found["attribute_map"], required)
    assert "V1beta1InferenceService" in types, models
    return types


def kubernetes_definition_for(cls_name):
    """The Kubernetes definition a kubernetes-client model stands for: V1Container -> io.k8s.api.core.v1.Container."""
    m = re.fullmatch(r"V(\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", cls_name)
    if not m:
        return None
    _, definitions = kubernetes_registry()
    suffix = f".v{m.group(1)}.{m.group(2)}"
    found = [k for k in definitions if k.endswith(suffix)]
    preferred = [k for k in found if k.startswith(("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta."))]
    found = preferred or found
    return found[0] if len(found) == 1 else None


def kserve_errors(value, type_name, path="$"):
    """Errors of `value` against the KServe SDK type `type_name`: unknown fields, missing required ones and wrong
    types, recursively; a Kubernetes type inside is checked against the strict Kubernetes schema. A type this cannot
    resolve is an error, so a manifest never passes unchecked."""
    if value is None:
        return []
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name})"]
        return [e for i, v in enumerate(value) for e in kserve_errors(v, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a map ({type_name})"]
        return [e for k, v in value.items() for e in kserve_errors(v, m.group(1) or m.group(2), f"{path}.{k}")]
    primitives = {
        "str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str,
        "ResourceQuantity": (str, int, float), "object": object,
    }
    if type_name in primitives:
        ok = isinstance(value, primitives[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    sdk = kserve_sdk_types()
    if type_name in sdk:
        openapi_types, attribute_map, required = sdk[type_name]
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({type_name})"]
        fields = {json_key: attr for attr, json_key in attribute_map.items()}
        errors = [f"{path}.{k}: unknown field of {type_name}" for k in value if k not in fields]
        errors += [f"{path}.{attribute_map[a]}: required by {type_name}"
                   for a in sorted(required) if attribute_map[a] not in value]
        for k, v in value.items():
            if k in fields:
                errors += kserve_errors(v, openapi_types[fields[k]], f"{path}.{k}")
        return errors
    definition = kubernetes_definition_for(type_name)
    if definition:
        return [f"{path}.{e}" for e in kubernetes_definition_errors(value, definition)]
    return [f"{path}: cannot check, the SDK's type {type_name} resolves to no schema"]


def errors_of(doc):
    key = (doc["apiVersion"], doc["kind"])
    if key in CRDS:
        return crd_errors(doc)
    if key in KSERVE:
        return kserve_errors(doc, KSERVE[key])
    try:
        builtin_schema(doc["kind"], doc["apiVersion"])
    except FileNotFoundError:
        pytest.fail(f"no schema for {doc['apiVersion']} {doc['kind']}: add its CRD to tests/schemas/ and CRDS")
    return builtin_errors(doc)


@pytest.mark.parametrize("item", documents(), ids=doc_id)
def test_manifest_validates(item):
    _, doc = item
    errors = errors_of(doc)
    assert errors == [], "\n".join(errors)


def test_builtin_kinds_also_pass_kubernetes_validate():
    # The package's own entry point, as a user would run it (`kubernetes-validate --strict -k 1.35.0 deploy/*.yaml`).
    builtin = [d for _, d in documents() if (d["apiVersion"], d["kind"]) not in CRDS.keys() | KSERVE.keys()]
    assert builtin
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# Where an unknown field is planted, per kind, to show the checks above refuse unknown fields at every level the
# manifests use (a path missing from a document is skipped; every kind in deploy/ must be listed).
UNKNOWN_FIELD_PATHS = {
    "InferenceService": [(), ("metadata",), ("spec",), ("spec", "predictor"), ("spec", "predictor", "model"),
                         ("spec", "predictor", "model", "modelFormat"), ("spec", "predictor", "model", "ports", 0)],
    "ClusterServingRuntime": [(), ("metadata",), ("spec",), ("spec", "supportedModelFormats", 0),
                              ("spec", "containers", 0), ("spec", "containers", 0, "readinessProbe", "httpGet"),
                              ("spec", "containers", 0, "securityContext")],
    "ScaledObject": [(), ("metadata",), ("spec",), ("spec", "scaleTargetRef"), ("spec", "triggers", 0),
                     ("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior", "scaleDown")],
    "PodMonitor": [(), ("metadata",), ("spec",), ("spec", "selector"), ("spec", "podMetricsEndpoints", 0),
                   ("spec", "podMetricsEndpoints", 0, "metricRelabelings", 0)],
    "ServiceMonitor": [(), ("metadata",), ("spec",), ("spec", "namespaceSelector"), ("spec", "selector"),
                       ("spec", "selector", "matchExpressions", 0), ("spec", "endpoints", 0),
                       ("spec", "endpoints", 0, "metricRelabelings", 0)],
    "HorizontalPodAutoscaler": [(), ("metadata",), ("spec",), ("spec", "metrics", 0, "pods", "metric"),
                                ("spec", "behavior", "scaleDown")],
    "Secret": [(), ("metadata",)],
    "ServiceAccount": [(), ("metadata",), ("secrets", 0)],
    "ConfigMap": [(), ("metadata",)],
}


@pytest.mark.parametrize("item", documents(), ids=doc_id)
def test_an_unknown_field_is_refused(item):
    _, doc = item
    assert doc["kind"] in UNKNOWN_FIELD_PATHS, f"list where an unknown field goes in a {doc['kind']}"
    tried = 0
    for path in UNKNOWN_FIELD_PATHS[doc["kind"]]:
        bad = copy.deepcopy(doc)
        target = bad
        try:
            for step in path:
                target = target[step]
        except (KeyError, IndexError, TypeError):
            continue
        target["ferroserveBogusField"] = "x"
        errors = errors_of(bad)
        assert any("ferroserveBogusField" in e for e in errors), f"an unknown field at {path} passed: {errors}"
        tried += 1
    assert tried >= 2


def changed(kind, change):
    """The first `kind` document in deploy/, copied and changed by `change`."""
    doc = copy.deepcopy(of_kind(kind)[0])
    change(doc)
    return doc


@pytest.mark.parametrize("kind,change", [
    ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas="one")),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].pop("modelFormat")),
    ("ClusterServingRuntime", lambda d: d["spec"]["containers"][0]["ports"][0].update(containerPort="http")),
    ("ClusterServingRuntime", lambda d: d["spec"].pop("containers")),
    ("ScaledObject", lambda d: d["spec"].update(maxReplicaCount="8")),
    ("ScaledObject", lambda d: d["spec"]["triggers"][0].pop("type")),
    ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(portNumber=70000)),
    ("PodMonitor", lambda d: d["spec"].pop("selector")),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds")),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(targetPort=True)),
    ("ServiceMonitor", lambda d: d["spec"].pop("endpoints")),
    ("HorizontalPodAutoscaler", lambda d: d["spec"].pop("maxReplicas")),
], ids=["InferenceService-type", "InferenceService-required", "ClusterServingRuntime-type",
        "ClusterServingRuntime-required", "ScaledObject-type", "ScaledObject-required", "PodMonitor-maximum",
        "PodMonitor-required", "ServiceMonitor-pattern", "ServiceMonitor-type", "ServiceMonitor-required",
        "HorizontalPodAutoscaler-required"])
def test_a_wrong_type_or_a_missing_required_field_is_refused(kind, change):
    assert errors_of(changed(kind, change))


# ---------------------------------------------------------------------------------------------------------------------
# What the manifests ask of the server and of each other


def container_args():
    """Every container argument list in the manifests, with KServe's `{{.Name}}` filled in."""
    found = []
    for name, doc in documents():
        spec = doc.get("spec") or {}
        containers = list(spec.get("containers") or [])
        predictor = spec.get("predictor") or {}
        containers += list(predictor.get("containers") or [])
        if predictor.get("model"):
            containers.append(predictor["model"])
        for c in containers:
            if c.get("args"):
                found.append((f"{doc_id((name, doc))}", [a.replace("{{.Name}}", "mlp") for a in c["args"]]))
    return found


def test_every_container_argument_is_accepted_by_the_binary():
    found = container_args()
    assert found
    for where, args in found:
        # clap parses (and checks the value of) every argument before it reaches the trailing --help: exit 2
        # names a refused one.
        run = subprocess.run([binary(), *args, "--help"], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, f"{where}: {args}: {run.stderr}"


def test_autoscalers_target_the_deployment_kserve_makes_in_raw_mode():
    raw = {d["metadata"]["name"] for d in of_kind("InferenceService")
           if d["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode") == "RawDeployment"}
    assert raw
    scalers = of_kind("ScaledObject") + of_kind("HorizontalPodAutoscaler")
    assert {d["kind"] for d in scalers} == {"ScaledObject", "HorizontalPodAutoscaler"}
    for d in scalers:
        ref = d["spec"]["scaleTargetRef"]
        assert (ref.get("apiVersion"), ref.get("kind")) == ("apps/v1", "Deployment")
        assert ref["name"] in {f"{isvc}-predictor" for isvc in raw}, ref
        isvc = ref["name"][: -len("-predictor")]
        (service,) = [s for s in of_kind("InferenceService") if s["metadata"]["name"] == isvc]
        annotations = service["metadata"]["annotations"]
        # KServe must not run an HPA of its own on the same Deployment.
        assert annotations.get("serving.kserve.io/autoscalerClass") == "external"


def test_the_pod_monitor_selects_the_runtimes_pods_on_its_http_port():
    (runtime,) = of_kind("ClusterServingRuntime")
    (monitor,) = of_kind("PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= runtime["spec"]["labels"].items()
    ports = {p["containerPort"] for p in runtime["spec"]["containers"][0]["ports"]}
    metrics_path = runtime["spec"]["annotations"]["prometheus.kserve.io/path"]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["portNumber"] in ports
        assert endpoint["path"] == metrics_path


def selector_matches(selector, labels):
    """Whether a Kubernetes LabelSelector selects an object with these labels (matchLabels and matchExpressions are
    ANDed; an empty selector selects everything)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def test_selector_matches():
    labels = {"a": "1", "b": "2"}
    assert selector_matches({}, labels)
    assert selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not selector_matches({"matchLabels": {"a": "2"}}, labels)
    assert selector_matches({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}, labels)
    assert selector_matches({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, labels)


def union(*maps):
    """KServe's utils.Union: later maps win."""
    out = {}
    for m in maps:
        out.update(m or {})
    return out


def predictor_labels(isvc, runtime):
    """The labels KServe puts on a predictor's objects (kserve/kserve pkg/controller/v1beta1/inferenceservice/
    components/predictor.go, buildObjectMeta): the runtime's `spec.labels`, then the InferenceService's, then the
    predictor's, then its own two."""
    return union(runtime["spec"].get("labels"), isvc["metadata"].get("labels"),
                 isvc["spec"]["predictor"].get("labels"),
                 {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"})


def raw_predictor_service(isvc, runtime):
    """The Service KServe makes for a predictor in RawDeployment mode (reconcilers/service/service_reconciler.go,
    createDefaultSvc): the predictor's labels; one port 80 whose targetPort is the first port of the first container
    and whose name is that container port's name, which KServe leaves empty or, in newer releases, sets to `http`."""
    container = runtime["spec"]["containers"][0]
    first = container["ports"][0]
    return {
        "name": f"{isvc['metadata']['name']}-predictor",
        "labels": predictor_labels(isvc, runtime),
        "ports": [{"names": {first.get("name", ""), first.get("name") or "http"}, "port": 80,
                   "targetPort": first["containerPort"]}],
        "containerPorts": {p["containerPort"] for p in container["ports"]},
    }


def knative_services(isvc, runtime):
    """The labels of the Services Knative makes for a Serverless predictor: a revision's public and private Services
    (knative/serving pkg/reconciler/serverlessservice/resources/services.go: the revision's labels, which carry the
    predictor's, plus networking.internal.knative.dev/serverlessservice and .../serviceType) and the route's Service
    (pkg/reconciler/route/resources/service.go: the route's labels plus serving.knative.dev/route)."""
    labels = predictor_labels(isvc, runtime)
    revision = f"{isvc['metadata']['name']}-predictor-00001"
    sks = {"networking.internal.knative.dev/serverlessservice": revision}
    return {
        "public": union(labels, sks, {"networking.internal.knative.dev/serviceType": "Public"}),
        "private": union(labels, sks, {"networking.internal.knative.dev/serviceType": "Private"}),
        "route": union(labels, {"serving.knative.dev/route": f"{isvc['metadata']['name']}-predictor"}),
    }


def deployment_mode(isvc):
    return isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Serverless")


def test_the_service_monitor_selects_the_raw_predictor_service_on_its_http_port():
    (runtime,) = of_kind("ClusterServingRuntime")
    (monitor,) = of_kind("ServiceMonitor")
    ours = [i for i in of_kind("InferenceService") if i["spec"]["predictor"].get("model", {}).get("runtime") == "ferroserve"]
    raw = [i for i in ours if deployment_mode(i) == "RawDeployment"]
    assert raw
    metrics_path = runtime["spec"]["annotations"]["prometheus.kserve.io/path"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    for isvc in raw:
        service = raw_predictor_service(isvc, runtime)
        assert selector_matches(monitor["spec"]["selector"], service["labels"]), (service, monitor["spec"]["selector"])
        (port,) = service["ports"]
        for endpoint in monitor["spec"]["endpoints"]:
            # A named port would have to be the Service port's name, which depends on the KServe release here.
            assert "port" not in endpoint or {endpoint["port"]} == port["names"]
            # prometheus-operator keeps a targetPort number's targets by the pod's declared container port number.
            assert endpoint["targetPort"] == port["targetPort"]
            assert endpoint["targetPort"] in service["containerPorts"]
            assert endpoint["path"] == metrics_path
    # Another runtime's predictor Service is left alone.
    other = copy.deepcopy(runtime)
    other["spec"]["labels"] = {"app.kubernetes.io/name": "another-runtime"}
    assert not selector_matches(monitor["spec"]["selector"], raw_predictor_service(raw[0], other)["labels"])


def test_the_service_monitor_selects_none_of_the_services_knative_makes():
    (runtime,) = of_kind("ClusterServingRuntime")
    (monitor,) = of_kind("ServiceMonitor")
    serverless = [i for i in of_kind("InferenceService") if deployment_mode(i) == "Serverless"]
    assert serverless
    for isvc in serverless:
        for kind, labels in knative_services(isvc, runtime).items():
            assert not selector_matches(monitor["spec"]["selector"], labels), (isvc["metadata"]["name"], kind)


def test_the_two_monitors_scrape_the_same_way():
    # One or the other is deployed (deploy/README.md): the series, and so every query, must not depend on which.
    (pod_monitor,) = of_kind("PodMonitor")
    (service_monitor,) = of_kind("ServiceMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == service_monitor["spec"]["namespaceSelector"]
    # The Service's labels include the pods' runtime labels the PodMonitor selects.
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= \
        service_monitor["spec"]["selector"]["matchLabels"].items()
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    (service_endpoint,) = service_monitor["spec"]["endpoints"]
    assert pod_endpoint["portNumber"] == service_endpoint["targetPort"]
    for field in ("path", "interval", "metricRelabelings"):
        assert pod_endpoint[field] == service_endpoint[field], field


# ---------------------------------------------------------------------------------------------------------------------
# PromQL: the metric names and labels an expression uses

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "atan2", "inf", "nan",
                   # aggregation operators, which may be followed by `by (...)` before their `(`
                   "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
                   "count_values", "limitk", "limit_ratio"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<number>(?:\d+(?:ms|[smhdwy]))+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<brace>\{)
  | (?P<paren>\()
  | (?P<other>[^\s])
""", re.VERBOSE)
MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?""")


def parse_promql(expr):
    """(selectors, grouping labels) of a PromQL expression: selectors as (metric, {label: value}) in order."""
    selectors, grouping = [], set()
    pos, last_ident = 0, None
    while pos < len(expr):
        if expr[pos].isspace():
            pos += 1
            continue
        m = TOKEN.match(expr, pos)
        kind, text = m.lastgroup, m.group()
        pos = m.end()
        if kind == "brace":
            end = expr.index("}", pos)
            matchers = {}
            for lm in MATCHER.finditer(expr[pos:end]):
                matchers[lm.group(1)] = lm.group(3)[1:-1]
            if last_ident is not None:
                selectors.append((last_ident, matchers))
            elif "__name__" in matchers:
                selectors.append((matchers.pop("__name__"), matchers))
            pos, last_ident = end + 1, None
            continue
        if last_ident is not None:  # an identifier not followed by `{` or `(`: a bare metric name
            selectors.append((last_ident, {}))
            last_ident = None
        if kind == "ident":
            following = expr[pos:].lstrip()
            if text in GROUPING and following.startswith("("):
                start = pos + expr[pos:].index("(") + 1
                end = expr.index(")", start)
                grouping |= {g.strip() for g in expr[start:end].split(",") if g.strip()}
                pos = end + 1
            elif following.startswith("(") or text.lower() in PROMQL_KEYWORDS:
                pass  # a function or aggregation, or a keyword
            else:
                last_ident = text
    if last_ident is not None:
        selectors.append((last_ident, {}))
    return selectors, grouping


def test_parse_promql():
    quantile = 'histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{x=~"$v", y!="z"}[$__rate_interval])))'
    assert parse_promql(quantile) == ([("a_bucket", {"x": "$v", "y": "z"})], {"model", "le"})
    assert parse_promql('sum(b) by (pod) / on(pod) group_left c{d="e"} offset 5m') == \
        ([("b", {}), ("c", {"d": "e"})], {"pod"})
    assert parse_promql('{__name__="f", g="h"} == 1') == ([("f", {"g": "h"})], set())


def queries():
    """(where, PromQL expression, extra labels the expression's metrics must carry) for every query in deploy/."""
    found = []
    for name, doc in documents():
        where = doc_id((name, doc))
        if doc["kind"] == "ScaledObject":
            for t in doc["spec"]["triggers"]:
                if t["type"] == "prometheus":
                    found.append((f"{where} trigger {t.get('name')}", t["metadata"]["query"], set()))
        if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
            for rule in yaml.safe_load(doc["data"]["config.yaml"])["rules"]:
                found.append((f"{where} seriesQuery", rule["seriesQuery"], set(rule["resources"]["overrides"])))
                series = parse_promql(rule["seriesQuery"])[0][0][0]
                # The adapter's templates: the series, the label matchers it adds, its grouping by resource labels.
                group_by = ", ".join(rule["resources"]["overrides"])
                metrics_query = (rule["metricsQuery"].replace("<<.Series>>", series)
                                 .replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", group_by))
                found.append((f"{where} metricsQuery", metrics_query, set()))
    with open(os.path.join(DEPLOY, "grafana-dashboard.json")) as f:
        dashboard = json.load(f)

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for t in panel.get("targets", []):
            found.append((f"grafana panel {panel['title']!r} {t['refId']}", t["expr"], set()))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", query)
            assert m, f"grafana variable {var['name']}: only label_values(selector, label) is checked: {query}"
            found.append((f"grafana variable {var['name']}", m.group(1), {m.group(2)}))
    return found


def adapter_metrics():
    """The metric names prometheus-adapter serves, from the rules in deploy/, mapped to the series they come from."""
    served = {}
    for cm in of_kind("ConfigMap"):
        if "config.yaml" in cm.get("data", {}):
            for rule in yaml.safe_load(cm["data"]["config.yaml"])["rules"]:
                series = parse_promql(rule["seriesQuery"])[0][0][0]
                assert re.search(rule["name"]["matches"], series), rule
                served[rule["name"].get("as") or series] = series
    return served


# ---------------------------------------------------------------------------------------------------------------------
# The live server's /metrics after traffic

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$')


@pytest.fixture(scope="module")
def exposition():
    """{series name: {sets of label names}} and {family: type} from /metrics after HTTP and gRPC inferences and a
    refused request."""
    s = Server()
    try:
        x = np.ones((2, 16), dtype=np.float32)
        http = httpclient.InferenceServerClient(s.http_addr)
        for _ in range(3):
            inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
            inp.set_data_from_numpy(x)
            http.infer("mlp", [inp])
        http.close()
        grpc = grpcclient.InferenceServerClient(s.grpc_addr)
        for _ in range(2):
            inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
            inp.set_data_from_numpy(x)
            grpc.infer("mlp", [inp])
        grpc.close()
        refused = urllib.request.Request(s.http_url + "/v2/models/mlp/infer", data=b'{"inputs":[]}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(refused)
        assert e.value.code == 400
        with urllib.request.urlopen(s.http_url + "/metrics") as r:
            text = r.read().decode()
    finally:
        s.stop()
    series, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            types[family] = kind
        elif line.strip() and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            labels = frozenset(re.findall(r'(\w+)="', m.group(2) or ""))
            series.setdefault(m.group(1), set()).add(labels)
    return series, types


def family_type(name, types):
    """The declared type of the family a series name belongs to (histogram series end in _bucket, _sum, _count)."""
    if name in types:
        return types[name]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in types:
            return types[name[: -len(suffix)]]
    return None


def monitor_endpoints():
    """(monitor, endpoint) for every scrape endpoint of the PodMonitors and ServiceMonitors in deploy/."""
    found = [(f"PodMonitor/{m['metadata']['name']}", e) for m in of_kind("PodMonitor")
             for e in m["spec"]["podMetricsEndpoints"]]
    found += [(f"ServiceMonitor/{m['metadata']['name']}", e) for m in of_kind("ServiceMonitor")
              for e in m["spec"]["endpoints"]]
    return found


def monitors_dropping(name):
    """The monitors whose metricRelabelings drop the series `name` (keep/drop rules on __name__)."""
    dropping = []
    for monitor, endpoint in monitor_endpoints():
        for rule in endpoint.get("metricRelabelings", []):
            action = rule.get("action", "replace").lower()
            if rule.get("sourceLabels") == ["__name__"] and action in ("keep", "drop"):
                matched = re.fullmatch(rule["regex"], name) is not None
                if matched != (action == "keep"):
                    dropping.append(monitor)
                    break
    return dropping


def test_monitors_dropping():
    kinds = {m.split("/")[0] for m, _ in monitor_endpoints()}
    assert kinds == {"PodMonitor", "ServiceMonitor"}
    assert monitors_dropping("ferroserve_inflight_requests") == []
    assert {m.split("/")[0] for m in monitors_dropping("go_goroutines")} == kinds


def test_every_queried_metric_is_exposed_with_the_labels_the_query_uses(exposition):
    series, types = exposition
    found = queries()
    assert len(found) > 20
    problems = []
    for where, expr, extra_labels in found:
        selectors, grouping = parse_promql(expr)
        if not selectors:
            problems.append(f"{where}: no metric in {expr!r}")
        for name, matchers in selectors:
            if name not in series:
                problems.append(f"{where}: {name} is not exposed")
                continue
            kind = family_type(name, types)
            if name.endswith("_bucket") and kind != "histogram":
                problems.append(f"{where}: {name} is not a histogram's buckets ({kind})")
            for monitor in monitors_dropping(name):
                problems.append(f"{where}: {name} is dropped by the metricRelabelings of {monitor}")
            wanted = (set(matchers) | grouping | extra_labels) - TARGET_LABELS
            if not any(wanted <= labels for labels in series[name]):
                has = sorted(map(sorted, series[name]))
                problems.append(f"{where}: no {name} series has the labels {sorted(wanted)} (it has {has})")
    assert problems == [], "\n".join(problems)


def test_every_autoscaler_metric_is_one_the_adapter_serves(exposition):
    series, _ = exposition
    served = adapter_metrics()
    assert served
    for hpa in of_kind("HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            source = metric.get("pods") or metric.get("external") or metric.get("object")
            assert source, f"{metric['type']} metrics come from no adapter rule"
            name = source["metric"]["name"]
            assert name in served, f"HPA metric {name} is not served by a prometheus-adapter rule in deploy/"
            # The selector's labels become label matchers on the series the rule reads.
            labels = set(source["metric"].get("selector", {}).get("matchLabels", {}))
            assert any(labels <= l for l in series[served[name]]), (name, labels)
