"""deploy/k8s: every manifest validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict),
then checked for the wiring a schema cannot see (selectors, probes, HPA target and metric, settings keys)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from tests.deploy.deploy_checks import DEPLOY, load_yaml_docs, vllm_metric_families

K8S = DEPLOY / "k8s"
# Oldest and newest Kubernetes minor versions we promise the manifests for.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
ENTRYPOINT_KEYS = {"ALM_GRACEFUL_SHUTDOWN_S"}

KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
# Applied on their own, once, not by `kubectl apply -k`.
ONE_OFF = ["weights-download-job.yaml"]
MANIFESTS = sorted(KUSTOMIZATION["resources"])


def objects() -> dict[tuple[str, str], dict]:
    """(kind, name) → object, over every manifest in kustomization.yaml."""
    return {(o["kind"], o["metadata"]["name"]): o for f in MANIFESTS for o in load_yaml_docs(K8S / f)}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_kustomization_lists_every_manifest():
    # Files not listed: the kustomization itself, the adapter's Helm values (not a Kubernetes object), one-offs.
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter-values.yaml"}
    assert set(MANIFESTS) == on_disk - set(ONE_OFF)
    # The image override names the image the Deployments use.
    images = {container(o)["image"].split(":")[0] for o in objects().values() if o["kind"] == "Deployment"}
    assert images == {i["name"] for i in KUSTOMIZATION["images"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS + ONE_OFF)
def test_manifest_is_valid(manifest: str, version: str):
    docs = load_yaml_docs(K8S / manifest)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_is_strict():
    # A misspelt field must fail, or the check above proves nothing.
    deployment = copy.deepcopy(objects()[("Deployment", "alm-engine")])
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", ["alm-engine", "alm-gateway"])
def test_services_and_pdbs_select_their_pods(name: str):
    objs = objects()
    pod_labels = objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
    assert objs[("Deployment", name)]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objs[("Service", name)]["spec"]["selector"].items() <= pod_labels.items()
    assert objs[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = objs[("Service", name)]["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(objs[("Deployment", name)])["ports"]}


def test_engine_pods_get_a_gpu_the_weights_and_real_probes():
    engine = objects()[("Deployment", "alm-engine")]
    c = container(engine)
    assert c["args"] == ["engine"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}["/models"] is True
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
    annotations = engine["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8000"
    # The HPA owns the replica count.
    assert "replicas" not in engine["spec"]


def test_gateway_is_ready_only_with_an_engine_and_finds_them_by_dns():
    objs = objects()
    c = container(objs[("Deployment", "alm-gateway")])
    assert c["args"] == ["gateway"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    settings = objs[("ConfigMap", "alm-settings")]["data"]
    # A headless engine Service: its name resolves to every ready engine pod.
    assert objs[("Service", "alm-engine")]["spec"]["clusterIP"] == "None"
    assert settings["ALM_ENGINE_URLS"] == "http://alm-engine:8000"
    assert settings["ALM_ENGINE_DNS_EXPAND"] == "true"


def test_configmap_keys_are_real_settings():
    from alm.engine import EngineSettings
    from server.config import Settings, load_settings

    data = objects()[("ConfigMap", "alm-settings")]["data"]
    gateway_keys = {f"ALM_{name.upper()}" for name in Settings.model_fields}
    engine_keys = {f"ALM_{name.upper()}" for name in EngineSettings.model_fields}
    assert not set(data) - gateway_keys - engine_keys - ENTRYPOINT_KEYS
    EngineSettings(**{k.removeprefix("ALM_").lower(): v for k, v in data.items() if k in engine_keys})
    gateway_values = {k.removeprefix("ALM_").lower(): v for k, v in data.items() if k in gateway_keys}
    settings = load_settings(**gateway_values)
    assert settings.engine_dns_expand is True


def test_hpa_scales_engines_on_the_adapter_metric():
    hpa = objects()[("HorizontalPodAutoscaler", "alm-engine")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "alm-engine"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    # The adapter's rule publishes exactly the metric the HPA asks for, from a metric vLLM really exports.
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    series = rule["seriesQuery"].split("{")[0].strip("'\"")
    assert series in vllm_metric_families()
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def test_weights_job_fills_the_path_engines_read():
    (job,) = load_yaml_docs(K8S / "weights-download-job.yaml")
    pod = job["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "alm-models"
    env = {e["name"]: e.get("value") for e in container({"spec": {"template": {"spec": pod}}})["env"]}
    settings = objects()[("ConfigMap", "alm-settings")]["data"]
    assert env["TARGET"] == settings["ALM_MODEL_PATH"]
    assert ("PersistentVolumeClaim", "alm-models") in objects()
