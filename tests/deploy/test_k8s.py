"""deploy/k8s: each overlay renders, validates against the Kubernetes and CRD schemas, and is safe."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import ROOT, SCHEMAS, unknown_variables

OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.32.0"
DATA_SERVICES = ("users", "inventory", "payments", "orders", "notifications")
# Paths that only the saga (the worker) may call on each service.
SAGA_PATHS = {
    "users": ["/internal/*"],
    "inventory": ["/reservations/*"],
    "payments": ["/charges/*", "/authorizations", "/authorizations/*"],
    "orders": ["/internal/*"],
    "notifications": ["/notifications/*"],
}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
    overlay = ROOT / "deploy" / "k8s" / "overlays" / str(request.param)
    run = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def closed(schema: Any) -> Any:
    """CRD schemas leave objects open (the API server prunes); close them so that a typo fails."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


CRDS = {key: closed(value) for key, value in json.loads((SCHEMAS / "crds.json").read_text()).items()}


def test_core_resources_validate_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    core = [
        doc for doc in rendered if "istio.io" not in doc["apiVersion"] and "keda.sh" not in doc["apiVersion"]
    ]
    assert len(core) > 40
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")


def test_istio_and_keda_resources_validate_against_their_crds(rendered: list[dict[str, Any]]) -> None:
    custom = [doc for doc in rendered if "istio.io" in doc["apiVersion"] or "keda.sh" in doc["apiVersion"]]
    kinds = {doc["kind"] for doc in custom}
    assert {
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "PeerAuthentication",
        "AuthorizationPolicy",
    } <= kinds
    for doc in custom:
        schema = CRDS[f"{doc['apiVersion']}/{doc['kind']}"]
        body = {key: value for key, value in doc.items() if key not in ("apiVersion", "kind", "metadata")}
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(body)
        ]
        assert errors == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_the_crd_check_catches_a_typo() -> None:
    rule = {"spec": {"host": "users", "trafficPolicy": {"conectionPool": {}}}}
    validator = jsonschema.Draft7Validator(CRDS["networking.istio.io/v1/DestinationRule"])
    assert list(validator.iter_errors(copy.deepcopy(rule)))


def test_every_deployment_is_probed_limited_non_root_and_rolls_without_downtime(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = of_kind(rendered, "Deployment")
    assert set(deployments) == {*DATA_SERVICES, "worker", "gateway"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert spec["strategy"]["type"] == "RollingUpdate"
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name


def test_every_workload_has_its_service_account_service_pdb_and_autoscaler(
    rendered: list[dict[str, Any]],
) -> None:
    hpas = of_kind(rendered, "HorizontalPodAutoscaler")
    scaled = of_kind(rendered, "ScaledObject")
    for name, deployment in of_kind(rendered, "Deployment").items():
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in of_kind(
            rendered, "ServiceAccount"
        )
        assert name in of_kind(rendered, "Service")
        assert name in of_kind(rendered, "PodDisruptionBudget")
        if name in hpas:
            metrics = {m["resource"]["name"] for m in hpas[name]["spec"]["metrics"]}
            assert metrics == {"cpu", "memory"}, name
        else:
            # Only the worker may be scaled by KEDA instead, on the task-queue backlog plus CPU and memory.
            assert name == "worker" and name in scaled
            triggers = {t["type"]: t for t in scaled[name]["spec"]["triggers"]}
            assert {"temporal", "cpu", "memory"} <= set(triggers)
            assert triggers["temporal"]["metadata"]["taskQueue"] == "orders"
            assert scaled[name]["spec"]["fallback"]["replicas"] >= 1


def test_migrations_run_as_jobs_and_the_services_do_not_migrate(rendered: list[dict[str, Any]]) -> None:
    jobs = of_kind(rendered, "Job")
    deployments = of_kind(rendered, "Deployment")
    for name in DATA_SERVICES:
        assert jobs[f"migrate-{name}"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
            "migrate",
            name,
        ]
        env = {e["name"]: e for e in deployments[name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env[f"{name.upper()}_AUTO_MIGRATE"]["value"] == "false"


def test_secrets_are_references_never_values(rendered: list[dict[str, Any]]) -> None:
    assert of_kind(rendered, "Secret") == {}
    for doc in rendered:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for env in container.get("env", []):
                secretish = any(
                    word in env["name"] for word in ("PASSWORD", "SECRET", "TOKEN", "KEY", "DATABASE_URL")
                )
                if secretish:
                    assert "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{doc['metadata']['name']}: {env['name']}"
                    )


def test_every_variable_set_is_read_by_the_settings(rendered: list[dict[str, Any]]) -> None:
    names = {key for config in of_kind(rendered, "ConfigMap").values() for key in config.get("data", {})}
    for deployment in of_kind(rendered, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names |= {env["name"] for env in container.get("env", [])}
    assert unknown_variables(names) == set()


def test_mesh_is_mtls_and_only_the_worker_reaches_the_saga_endpoints(rendered: list[dict[str, Any]]) -> None:
    assert of_kind(rendered, "PeerAuthentication")["default"]["spec"]["mtls"]["mode"] == "STRICT"
    policies = of_kind(rendered, "AuthorizationPolicy")
    assert policies["deny-all"]["spec"] == {}
    gateway_rules = policies["gateway"]["spec"]["rules"]
    assert any(
        "istio-ingressgateway" in p
        for r in gateway_rules
        for s in r["from"]
        for p in s["source"].get("principals", [])
    )
    for name, saga_paths in SAGA_PATHS.items():
        rules = policies[name]["spec"]["rules"]
        for rule in rules:
            principals = [p for s in rule["from"] for p in s["source"].get("principals", [])]
            if any(p.endswith("/sa/gateway") for p in principals):
                assert set(saga_paths) <= set(rule["to"][0]["operation"]["notPaths"]), name
        assert any(
            p.endswith("/sa/worker")
            for r in rules
            for s in r["from"]
            for p in s["source"].get("principals", [])
        )
    gateway = of_kind(rendered, "Gateway")["ordersaga"]["spec"]["servers"]
    assert any(
        server["tls"].get("mode") == "SIMPLE" and server["tls"].get("credentialName") for server in gateway
    )


def test_every_deployment_runs_in_production_mode(rendered: list[dict[str, Any]]) -> None:
    # ORDERSAGA_ENV=production is what makes a process refuse the development secrets.
    configs = of_kind(rendered, "ConfigMap")
    for name, deployment in of_kind(rendered, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env |= configs[source["configMapRef"]["name"]]["data"]
            env |= {e["name"]: e.get("value", "") for e in container.get("env", [])}
            assert env.get("ORDERSAGA_ENV") == "production", name


def seconds(duration: str) -> float:
    """An Istio duration ("15s", "500ms", "1m") in seconds."""
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if duration.endswith(suffix) and duration[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(duration[: -len(suffix)]) * factor
    raise ValueError(f"not a duration: {duration!r}")


def gateway_upstream_policy(rendered: list[dict[str, Any]]) -> dict[str, float]:
    """The gateway's upstream timeouts and retries: its settings' defaults, then the ConfigMap's values."""
    from services.gateway.settings import UPSTREAMS, Settings

    values: dict[str, Any] = {name: field.default for name, field in Settings.model_fields.items()}
    for key, value in of_kind(rendered, "ConfigMap")["ordersaga-gateway"]["data"].items():
        field = key.removeprefix("GATEWAY_").lower()
        if field in values:
            values[field] = value
    policy: dict[str, float] = {}
    for name in UPSTREAMS:
        timeout, retries = float(values[f"{name}_timeout"]), int(values[f"{name}_retries"])
        # The slowest answer the gateway can give: its connection failures retried with backoff
        # (a timeout is never retried), a wait for a free connection, then one attempt timing out.
        backoff = sum(float(values["retry_backoff_seconds"]) * 2**i for i in range(retries))
        wait = float(values.get("connection_wait_seconds") or 0.0)
        policy[name] = timeout + retries * float(values["connect_timeout"]) + backoff + wait
        policy[f"{name}_timeout"] = timeout
    return policy


SAFE_RETRY_ON = {"connect-failure", "refused-stream", "reset-before-request"}


def test_one_retry_layer_the_mesh_retries_only_undelivered_requests(rendered: list[dict[str, Any]]) -> None:
    policy = gateway_upstream_policy(rendered)
    max_upstream_timeout = max(policy[f"{name}_timeout"] for name in DATA_SERVICES)
    slowest_gateway_answer = max(policy[name] for name in DATA_SERVICES)
    from workers.settings import WorkerSettings

    worker_timeout = WorkerSettings.model_fields["http_timeout_seconds"].default
    services = of_kind(rendered, "VirtualService")
    assert {"ordersaga-api", "ordersaga-internal"} <= set(services)
    for service in services.values():
        edge = bool(service["spec"].get("gateways"))
        for route in service["spec"]["http"]:
            where = f"{service['metadata']['name']}/{route['name']}"
            total = seconds(route["timeout"])
            # The gateway answers (504 problem+json) before the mesh gives up on it.
            assert total > (slowest_gateway_answer if edge else max_upstream_timeout), where
            retries = route.get("retries", {})
            if not retries.get("attempts"):
                continue
            retry_on = set(retries["retryOn"].split(","))
            # Never a response: a 5xx is the gateway's answer, already retried where that is safe.
            assert not any(
                word in condition for condition in retry_on for word in ("5xx", "503", "gateway-error")
            ), where
            assert retry_on <= SAFE_RETRY_ON, where
            per_try = seconds(retries["perTryTimeout"])
            assert per_try > max_upstream_timeout, where
            assert total >= per_try, where
            if edge:
                assert per_try > slowest_gateway_answer, where
            else:
                assert per_try > worker_timeout, where


def test_the_gateway_replicas_are_not_ejected_for_relaying_upstream_errors(
    rendered: list[dict[str, Any]],
) -> None:
    outlier = of_kind(rendered, "DestinationRule")["gateway"]["spec"]["trafficPolicy"]["outlierDetection"]
    assert outlier["splitExternalLocalOriginErrors"] is True
    assert outlier["consecutive5xxErrors"] == 0
    assert outlier["consecutiveGatewayErrors"] == 0
    assert outlier["consecutiveLocalOriginFailures"] >= 1


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
    path = ROOT / "deploy" / "k8s" / "overlays" / overlay
    run = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def _build_id(deployment: dict[str, Any]) -> tuple[str, str, str, str]:
    """The build id as the selector, the pod labels, WORKER_BUILD_ID and the image tag say it."""
    template = deployment["spec"]["template"]
    [container] = template["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    return (
        deployment["spec"]["selector"]["matchLabels"]["ordersaga.io/build-id"],
        template["metadata"]["labels"]["ordersaga.io/build-id"],
        env["WORKER_BUILD_ID"],
        container["image"].rsplit(":", 1)[1],
    )


def test_a_new_worker_version_is_its_own_deployment_beside_the_old_one() -> None:
    [current] = [d for d in _render("prod") if (d["kind"], d["metadata"]["name"]) == ("Deployment", "worker")]
    assert set(_build_id(current)) == {"0.1.0"}
    docs = _render("worker-next")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "worker-0-2-0"),
        ("HorizontalPodAutoscaler", "worker-0-2-0"),
    ]
    [nxt] = of_kind(docs, "Deployment").values()
    [autoscaler] = of_kind(docs, "HorizontalPodAutoscaler").values()
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # Each version scales on its own load, so the old one shrinks alone while its pinned sagas drain.
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "worker-0-2-0"
    assert set(_build_id(nxt)) == {"0.2.0"}
    assert nxt["metadata"]["namespace"] == current["metadata"]["namespace"]
    # Disjoint selectors: neither Deployment scales down or adopts the other's pods.
    assert nxt["spec"]["selector"]["matchLabels"] != current["spec"]["selector"]["matchLabels"]
    [container] = nxt["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["WORKER_PROMOTE"] == "never", "promotion is the operator's step"
    assert env["WORKER_DEPLOYMENT_NAME"] == "ordersaga-worker"
    # The same shared config and identity as the running version.
    spec, old_spec = nxt["spec"]["template"]["spec"], current["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == old_spec["serviceAccountName"]
    assert spec["containers"][0]["envFrom"] == old_spec["containers"][0]["envFrom"]
