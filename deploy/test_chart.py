"""Render, lint and validate helm/slimserve without a helm binary or a cluster.

- Helm v4's own engine (helm-python-sdk: lint --strict, render, values.schema.json),
- every rendered manifest against the Kubernetes OpenAPI schemas, strict
  (kubernetes-validate), for several Kubernetes versions,
- the security, probe, shutdown and autoscaling settings the chart promises,
- deploy/: Grafana dashboard JSON, prometheus-adapter rules, scrape config.

Run with `bash deploy/check-chart.sh` (makes the venv) or `pytest deploy/test_chart.py`.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
CHART = ROOT / "helm" / "slimserve"
RELEASE, NAMESPACE = "demo", "ml"
FULLNAME = f"{RELEASE}-slimserve"

# The chart needs >= 1.30 (preStop sleep action: in the 1.29 API but alpha, feature-gated off). Oldest supported, a middle one, newest known.
KUBE_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "hpa": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 12,
            "queueTime": {"enabled": True},
            "slaMissRatio": {"enabled": True},
        }
    },
    "hpa-custom-only": {
        "autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None, "queueTime": {"enabled": True}}
    },
    "servicemonitor-ingress": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusAnnotations": False,
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "tls": [{"secretName": "slimserve-tls", "hosts": ["slimserve.example.com"]}],
        },
    },
    "pvc-models": {
        "models": {
            "source": "volume",
            "volume": {
                "claimName": "slimserve-models",
                "manifest": 'labels = "/models/labels.txt"\n[[variant]]\nname = "full"\nfile = "/models/efficientnet_lite0_fp32.onnx"\n',
            },
        },
        "config": {"variants": ["full"], "batchSizes": [1, 2, 4], "defaultSlaMs": 250, "workers": 3},
        "resources": {"requests": {"cpu": "3", "memory": "1Gi"}, "limits": {"cpu": "3", "memory": "2Gi"}},
    },
    "grpc-probe-no-prestop": {
        "probes": {"grpcReadiness": True},
        "lifecycle": {"preStop": "none"},
        "podDisruptionBudget": {"maxUnavailable": "", "minAvailable": 1},
        "topologySpread": {"enabled": False},
    },
}

# ServiceMonitor is a CRD: kubernetes-validate has no schema for it. This is the
# subset of monitoring.coreos.com/v1 the chart uses, closed (strict).
SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}, "any": {"type": "boolean"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "action": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

# Metric names slimserve exports (src/metrics.rs) plus the process collector's.
SLIMSERVE_METRICS = {
    "slimserve_requests_total",
    "slimserve_errors_total",
    "slimserve_request_duration_seconds",
    "slimserve_queue_duration_seconds",
    "slimserve_inference_duration_seconds",
    "slimserve_prediction_error_seconds",
    "slimserve_preprocess_duration_seconds",
    "slimserve_batch_size",
    "slimserve_queue_depth",
    "slimserve_ready",
    "slimserve_routing_decisions_total",
    "slimserve_shed_total",
    "slimserve_sla_total",
    "slimserve_predicted_execution_seconds",
    "slimserve_variant_resident_bytes",
    "slimserve_variant_file_bytes",
    "process_resident_memory_bytes",
}
HISTOGRAMS = {
    "slimserve_request_duration_seconds",
    "slimserve_queue_duration_seconds",
    "slimserve_inference_duration_seconds",
    "slimserve_prediction_error_seconds",
    "slimserve_preprocess_duration_seconds",
    "slimserve_batch_size",
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_RENDER_CACHE: dict[str, dict[str, str]] = {}


def render(values: dict, key: str | None = None) -> dict[str, str]:
    if key is not None and key in _RENDER_CACHE:
        return _RENDER_CACHE[key]
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    if key is not None:
        _RENDER_CACHE[key] = out
    return out


def docs(rendered: dict[str, str]) -> list[dict]:
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                d.setdefault("__template", path)
                out.append(d)
    return out


def manifests(name: str) -> list[dict]:
    return docs(render(VALUE_SETS[name], name))


def one(ds: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in ds if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(ds: list[dict]) -> dict:
    dep = one(ds, "Deployment")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "slimserve")


# --- Helm: lint (strict) and schema ----------------------------------------------


@pytest.mark.parametrize("kube", ["v1.30.0", "v1.37.0"])
@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name, kube, record_property):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=kube)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, json.dumps(report, indent=1)
    record_property("summary", f"lint --strict {name:24} {kube}: 0 errors, 0 warnings, {len(report['messages'])} info")


def test_chart_metadata():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == "slimserve"
    # the preStop sleep action needs Kubernetes >= 1.30: installs on older clusters are refused
    assert meta["kubeVersion"] == ">=1.30.0-0"


@pytest.mark.parametrize(
    "bad",
    [
        {"securityContext": {"readOnlyRootFilesystem": False, "runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}},
        {"securityContext": {"allowPrivilegeEscalation": True, "runAsNonRoot": True, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}},
        {"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0}},
        {"models": {"source": "s3"}},
        {"config": {"batchSizes": []}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"autoscaling": {"queueTime": {"targetAverageValue": "fast"}}},
        {"unknownKey": 1},
    ],
)
def test_schema_rejects(bad):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"models": {"source": "volume"}}, "claimName"),
        ({"grpc": {"enabled": False}, "probes": {"grpcReadiness": True}}, "grpc.enabled"),
        ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, "at least one metric"),
        ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "not both"),
    ],
)
def test_render_refuses_inconsistent_values(bad, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(bad)


# --- Kubernetes schemas, strict -----------------------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_manifests_validate_strict(name, kube, record_property):
    ds = manifests(name)
    assert ds
    kinds = []
    for d in ds:
        d = {k: v for k, v in d.items() if k != "__template"}
        if d["kind"] == "ServiceMonitor":
            jsonschema.validate(d, SERVICEMONITOR_SCHEMA)
        else:
            try:
                kubernetes_validate.validate(d, kube, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{d['kind']}/{d['metadata']['name']} on {kube}: {'.'.join(map(str, e.path))}: {e.message}")
        kinds.append(d["kind"])
    record_property("summary", f"kubernetes-validate --strict {name:24} {kube}: {len(kinds)} manifests valid ({', '.join(sorted(kinds))})")


def test_strict_validation_is_not_vacuous():
    dep = {k: v for k, v in one(manifests("defaults"), "Deployment").items() if k != "__template"}
    kubernetes_validate.validate(dep, KUBE_VERSIONS[0], strict=True)
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)


def test_value_sets_render_the_expected_objects():
    kinds = lambda n: sorted(d["kind"] for d in manifests(n))
    assert kinds("defaults") == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Pod", "Service", "ServiceAccount"]
    )
    assert "HorizontalPodAutoscaler" in kinds("hpa")
    assert {"ServiceMonitor", "Ingress"} <= set(kinds("servicemonitor-ingress"))
    assert kinds("pvc-models").count("ConfigMap") == 3  # settings, manifest, test photo


# --- security, probes, shutdown ---------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_security_settings(name):
    ds = manifests(name)
    pod = one(ds, "Deployment")["spec"]["template"]["spec"]
    c = container(ds)
    psc, sc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532 and psc["runAsGroup"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sa = [d for d in ds if d["kind"] == "ServiceAccount"]
    assert all(d["automountServiceAccountToken"] is False for d in sa)
    # the only writable path: an emptyDir at /tmp
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp and tmp["emptyDir"]["sizeLimit"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly") and m["name"] != "tmp"]
    assert not writable, writable
    # resources requested and limited
    for kind in ("requests", "limits"):
        assert c["resources"][kind]["cpu"] and c["resources"][kind]["memory"]
    # the helm test pod is as locked down
    test_pod = one(ds, "Pod")
    assert test_pod["spec"]["automountServiceAccountToken"] is False
    tsc = test_pod["spec"]["containers"][0]["securityContext"]
    assert tsc["readOnlyRootFilesystem"] is True and tsc["allowPrivilegeEscalation"] is False
    assert tsc["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_probes_ports_and_shutdown(name):
    values = merge(render_values_defaults(), VALUE_SETS[name])
    ds = manifests(name)
    pod = one(ds, "Deployment")["spec"]["template"]["spec"]
    c = container(ds)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in one(ds, "Service")["spec"]["ports"]}
    assert svc_ports == {"http": (8080, "http"), "grpc": (8081, "grpc")}

    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    assert startup["httpGet"] == {"path": "/health/ready", "port": "http"}
    # model load + warm-up: the startup probe allows minutes, the others stay quick
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert live["httpGet"] == {"path": "/health/live", "port": "http"}
    if values["probes"]["grpcReadiness"]:
        assert ready["grpc"] == {"port": 8081, "service": ""}
    else:
        assert ready["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 10  # out of rotation soon after draining starts

    # drain: preStop delay, then SIGTERM; the grace period covers both
    drain = int(values["config"]["shutdownTimeoutSecs"])
    env = one(ds, "ConfigMap", FULLNAME)["data"]
    assert env["SLIMSERVE_SHUTDOWN_TIMEOUT_SECS"] == str(drain)
    grace = pod["terminationGracePeriodSeconds"]
    if values["lifecycle"]["preStop"] == "sleep":
        pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre >= 5
        assert grace >= pre + drain + 1
    else:
        assert "lifecycle" not in c
        assert grace >= drain + 1


def render_values_defaults() -> dict:
    with helm.Chart.load(CHART) as chart:
        return chart.values


@pytest.mark.parametrize("name", VALUE_SETS)
def test_workers_follow_cpu_limit_and_config_checksum(name):
    values = merge(render_values_defaults(), VALUE_SETS[name])
    ds = manifests(name)
    c = container(ds)
    env = {e["name"]: e for e in c["env"]}
    if values["config"]["workers"]:
        assert env["SLIMSERVE_WORKERS"]["value"] == str(values["config"]["workers"])
    else:
        ref = env["SLIMSERVE_WORKERS"]["valueFrom"]["resourceFieldRef"]
        assert ref == {"containerName": "slimserve", "resource": "limits.cpu", "divisor": "1"}
    assert c["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    cm = one(ds, "ConfigMap", FULLNAME)["data"]
    assert cm["SLIMSERVE_DEFAULT_SLA_MS"] == str(values["config"]["defaultSlaMs"])
    assert cm["SLIMSERVE_BATCH_SIZES"] == ",".join(map(str, values["config"]["batchSizes"]))
    ann = one(ds, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/config"])


def test_config_change_rolls_pods():
    a = one(docs(render({})), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    b = one(docs(render({"config": {"defaultSlaMs": 200}})), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert a != b


def test_models_baked_in_by_default():
    ds = manifests("defaults")
    assert one(ds, "ConfigMap", FULLNAME)["data"]["SLIMSERVE_MODELS"] == "/opt/slimserve/models"
    assert [v["name"] for v in one(ds, "Deployment")["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_models_from_pvc_with_manifest():
    ds = manifests("pvc-models")
    pod = one(ds, "Deployment")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "slimserve-models", "readOnly": True}
    assert vols["models-manifest"]["configMap"]["name"] == f"{FULLNAME}-manifest"
    mounts = {m["name"]: m for m in container(ds)["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"] is True
    cm = one(ds, "ConfigMap", FULLNAME)["data"]
    assert cm["SLIMSERVE_MODELS"] == "/etc/slimserve/manifest/variants.toml"
    assert cm["SLIMSERVE_VARIANTS"] == "full"
    manifest = one(ds, "ConfigMap", f"{FULLNAME}-manifest")["data"]["variants.toml"]
    assert 'file = "/models/efficientnet_lite0_fp32.onnx"' in manifest
    # without a manifest in values, the volume's own variants.toml is used
    ds2 = docs(render({"models": {"source": "volume", "volume": {"claimName": "m"}}}))
    assert one(ds2, "ConfigMap", FULLNAME)["data"]["SLIMSERVE_MODELS"] == "/models"


# --- autoscaling, monitoring, availability ---------------------------------------


def test_hpa_cpu_and_custom_metrics():
    ds = manifests("hpa")
    hpa = one(ds, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert len(hpa["spec"]["metrics"]) == 3
    cpu = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Resource")
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    pods = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods == {
        "slimserve_queue_time_seconds": {"type": "AverageValue", "averageValue": "50m"},
        "slimserve_sla_miss_ratio": {"type": "AverageValue", "averageValue": "20m"},
    }
    # the HPA owns the replica count
    assert "replicas" not in one(ds, "Deployment")["spec"]
    only = one(manifests("hpa-custom-only"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in only] == ["Pods"]


def test_adapter_rules_serve_the_hpa_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    served = {r["name"]["as"]: r for r in rules}
    hpa_values = render_values_defaults()["autoscaling"]
    for key in ("queueTime", "slaMissRatio"):
        name = hpa_values[key]["metricName"]
        assert name in served, name
        rule = served[name]
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert rule["metricsQuery"].count("(") == rule["metricsQuery"].count(")")
        for metric in re.findall(r"\b(slimserve_[a-z_]+?)(?:_sum|_count|_bucket)?\{", rule["metricsQuery"] + rule["seriesQuery"]):
            assert metric in SLIMSERVE_METRICS, metric


def test_servicemonitor_and_scrape_annotations():
    ds = manifests("servicemonitor-ingress")
    sm = one(ds, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ep = sm["spec"]["endpoints"][0]
    assert ep["port"] == "http" and ep["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"] == one(ds, "Service")["spec"]["selector"]
    ann = one(ds, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in ann
    ann = one(manifests("defaults"), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8080"
    ing = one(ds, "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


def test_pdb_and_topology_spread():
    ds = manifests("defaults")
    pdb = one(ds, "PodDisruptionBudget")
    dep = one(ds, "Deployment")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    tsc = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in tsc} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(t["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] for t in tsc)
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert one(manifests("grpc-probe-no-prestop"), "PodDisruptionBudget")["spec"] == {
        "minAvailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": pdb["spec"]["selector"],
    }


def test_helm_test_hook_classifies_a_cat():
    ds = manifests("defaults")
    pod = one(ds, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    photo = one(ds, "ConfigMap", f"{FULLNAME}-test-photo")
    assert photo["metadata"]["annotations"]["helm.sh/hook"] == "test"
    data = base64.b64decode(photo["binaryData"]["chelsea.jpg"])
    assert data == (CHART / "files" / "chelsea.jpg").read_bytes() and data[:3] == b"\xff\xd8\xff"
    script = pod["spec"]["containers"][0]["args"][0]
    assert f"http://{FULLNAME}:8080/classify" in script
    assert "tabby" in script and "--data-binary @/photo/chelsea.jpg" in script
    # the script's JSON parsing, on a response of the shape slimserve answers
    sed = re.search(r"sed -n '([^']+)'", script).group(1)
    assert sed.startswith("s/.*\"predictions\"")
    body = '{"variant":"full","route":"most_accurate","batch_size":1,"budget_ms":10000.0,"predictions":[{"index":281,"label":"tabby","score":0.61}],"timings":{"queue_ms":0.1}}'
    pattern = sed[2:].split("/")[0].replace("\\[", "\\[").replace("\\(", "(").replace("\\)", ")")
    assert re.match(pattern, body).group(1) == "tabby"


def test_notes_render():
    for name in VALUE_SETS:
        notes = render(VALUE_SETS[name], name)["slimserve/templates/NOTES.txt"]
        assert "helm test" in notes and FULLNAME in notes


# --- deploy/: dashboard, scrape config -----------------------------------------------


def test_grafana_dashboard():
    dash = json.loads((DEPLOY / "grafana" / "slimserve-dashboard.json").read_text())
    assert dash["uid"] == "slimserve" and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
        for m in re.findall(r"\b((?:slimserve|process)_[a-z_]+)", e):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if base != m:
                assert base in HISTOGRAMS, m
            assert base in SLIMSERVE_METRICS, m
            used.add(base)
    text = "\n".join(exprs)
    # what the issue asks the dashboard to show
    for needle in ("histogram_quantile(0.99", 'outcome="met"', "slimserve_batch_size_bucket", "slimserve_variant_resident_bytes", "slimserve_routing_decisions_total"):
        assert needle in text, needle
    assert {"slimserve_request_duration_seconds", "slimserve_sla_total", "slimserve_batch_size", "slimserve_requests_total", "slimserve_variant_resident_bytes"} <= used


def test_scrape_config():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = {r.get("target_label") for r in jobs["slimserve-pods"]["relabel_configs"]}
    assert {"namespace", "pod", "__address__", "__metrics_path__"} <= targets
