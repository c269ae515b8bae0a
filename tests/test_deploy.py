"""deploy/k8s/: every manifest validates against Kubernetes' own schemas (strict: an unknown or
misspelt field fails), and the pieces refer to each other correctly — probes, selectors, the
autoscaler's and disruption budget's targets, the config the pods mount, the secrets it names
and the Redis its cache points at. No cluster needed: schemas from kubernetes-validate."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

from gateway.settings import parse_settings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
K8S_VERSION = "1.36"  # a recent release whose schemas kubernetes-validate ships
CONFIG_PATH = "/config/orggraph.toml"
SECRET_NAME = "orggraph-secrets"
GATEWAY_KEY_HASH = "sha256:" + "ab" * 32


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in _manifest_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{i}", doc))
    return docs


DOCS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's port number."""
    ports = container.get("ports", [])
    if isinstance(port, str):
        named = [p["containerPort"] for p in ports if p.get("name") == port]
        assert named, f"container {container['name']} has no port named {port!r}"
        return named[0]
    assert port in [p["containerPort"] for p in ports], f"{port} is not a port of the container"
    return port


GATEWAY = _one("Deployment", "orggraph")
GATEWAY_POD = GATEWAY["spec"]["template"]
(GATEWAY_CONTAINER,) = GATEWAY_POD["spec"]["containers"]
REDIS = _one("Deployment", "orggraph-redis")
REDIS_POD = REDIS["spec"]["template"]
(REDIS_CONTAINER,) = REDIS_POD["spec"]["containers"]


def _flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} should appear once in {argv}"
    return argv[argv.index(name) + 1]


def _argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


# --- schemas -------------------------------------------------------------------------------


def test_the_pinned_kubernetes_version_is_shipped() -> None:
    assert K8S_VERSION in {major_minor(v) for v in all_versions()}


@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_manifest_is_valid_kubernetes(where: str, doc: dict[str, Any]) -> None:
    validated = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert validated == K8S_VERSION


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The schema check above is worth something: a typo in a real manifest is refused."""
    broken = copy.deepcopy(GATEWAY)
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]


def test_expected_kinds_are_present() -> None:
    kinds = sorted((d["apiVersion"], d["kind"]) for _, d in DOCS)
    assert kinds == sorted(
        [
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("v1", "Service"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("policy/v1", "PodDisruptionBudget"),
        ]
    )


# --- the gateway Deployment ----------------------------------------------------------------


def test_gateway_runs_the_image_with_the_mounted_config() -> None:
    spec = GATEWAY["spec"]
    assert spec["replicas"] == 3
    assert _selects(spec["selector"]["matchLabels"], GATEWAY_POD["metadata"]["labels"])
    assert GATEWAY_CONTAINER["image"] == "orggraph:latest"
    argv = _argv(GATEWAY_CONTAINER)
    assert argv[:2] == ["orggraph", "serve"]
    assert _flag(argv, "--host") == "0.0.0.0"
    assert _container_port(GATEWAY_CONTAINER, int(_flag(argv, "--port"))) == 8000
    assert _flag(argv, "--config") == CONFIG_PATH

    # The --config file is a key of the ConfigMap, mounted read-only at its directory.
    directory, filename = CONFIG_PATH.rsplit("/", 1)
    (mount,) = [m for m in GATEWAY_CONTAINER["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in GATEWAY_POD["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = _one("ConfigMap", volume["configMap"]["name"])
    assert filename in configmap["data"]


def test_probes_hit_readyz_and_healthz_on_the_serving_port() -> None:
    port = int(_flag(_argv(GATEWAY_CONTAINER), "--port"))
    readiness = GATEWAY_CONTAINER["readinessProbe"]["httpGet"]
    liveness = GATEWAY_CONTAINER["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    assert _container_port(GATEWAY_CONTAINER, readiness["port"]) == port
    assert _container_port(GATEWAY_CONTAINER, liveness["port"]) == port


@pytest.mark.parametrize("container", [GATEWAY_CONTAINER, REDIS_CONTAINER], ids=["gw", "redis"])
def test_resources_and_security_context(container: dict[str, Any]) -> None:
    pod = GATEWAY_POD if container is GATEWAY_CONTAINER else REDIS_POD
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    pod_sc = pod["spec"].get("securityContext", {})
    sc = container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    # The image's USER is a name: the kubelet can only enforce runAsNonRoot with a numeric uid.
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")


# --- Service, HPA, PDB ---------------------------------------------------------------------


def test_service_selects_gateway_pods_only_and_targets_the_container_port() -> None:
    service = _one("Service", "orggraph")
    selector = service["spec"]["selector"]
    assert _selects(selector, GATEWAY_POD["metadata"]["labels"])
    assert not _selects(selector, REDIS_POD["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    port_arg = int(_flag(_argv(GATEWAY_CONTAINER), "--port"))
    assert _container_port(GATEWAY_CONTAINER, port["targetPort"]) == port_arg


def test_hpa_scales_the_gateway_deployment_on_cpu() -> None:
    (hpa,) = [d for _, d in DOCS if d["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        GATEWAY["apiVersion"],
        GATEWAY["kind"],
        GATEWAY["metadata"]["name"],
    )
    assert GATEWAY["spec"]["replicas"] >= hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # CPU utilisation is measured against the request: without one the HPA cannot scale.
    assert "cpu" in GATEWAY_CONTAINER["resources"]["requests"]


def test_pdb_covers_gateway_pods_and_still_allows_a_drain() -> None:
    (pdb,) = [d for _, d in DOCS if d["kind"] == "PodDisruptionBudget"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert _selects(selector, GATEWAY_POD["metadata"]["labels"])
    assert not _selects(selector, REDIS_POD["metadata"]["labels"])
    (hpa,) = [d for _, d in DOCS if d["kind"] == "HorizontalPodAutoscaler"]
    floor = hpa["spec"]["minReplicas"]
    if "minAvailable" in pdb["spec"]:
        assert 0 < pdb["spec"]["minAvailable"] < floor
    else:
        assert 0 < pdb["spec"]["maxUnavailable"] < floor


# --- the gateway config and its secrets ----------------------------------------------------


def _config_text() -> str:
    return _one("ConfigMap", "orggraph-config")["data"]["orggraph.toml"]


def _env_refs(text: str) -> set[str]:
    return set(re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', text))


def _placeholder_env() -> dict[str, str]:
    env = {name: f"placeholder-{name.lower()}-value" for name in _env_refs(_config_text())}
    env["ACME_GATEWAY_KEY_HASH"] = GATEWAY_KEY_HASH
    return env


def test_every_env_reference_comes_from_the_secret() -> None:
    refs = _env_refs(_config_text())
    assert "ORGGRAPH_CURSOR_SECRET" in refs
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in GATEWAY_CONTAINER["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs <= set(from_secret), f"not set from a Secret: {sorted(refs - set(from_secret))}"
    assert {ref["name"] for ref in from_secret.values()} == {SECRET_NAME}
    keys = [ref["key"] for ref in from_secret.values()]
    assert len(keys) == len(set(keys)), "two variables read the same Secret key"


def test_no_secret_is_written_into_the_config() -> None:
    raw = tomllib.loads(_config_text())
    assert raw["server"]["cursor_secret"].startswith("env:")
    for name, tenant in raw["tenants"].items():
        assert all(k.startswith("env:") for k in tenant["api_keys"]), name
        for provider, creds in tenant["credentials"].items():
            for key, value in creds.items():
                assert value.startswith("env:"), f"tenants.{name}.credentials.{provider}.{key}"


def test_config_parses_and_caches_in_the_redis_service() -> None:
    env = _placeholder_env()
    settings = parse_settings(tomllib.loads(_config_text()), env=env)
    # A secret shared by every replica, so a cursor from one replica works on another.
    assert settings.server.cursor_secret == env["ORGGRAPH_CURSOR_SECRET"]
    assert settings.server.port == int(_flag(_argv(GATEWAY_CONTAINER), "--port"))
    assert settings.tenants, "the example config has no tenant"

    assert settings.cache.backend == "redis"
    assert settings.cache.url is not None
    url = urlsplit(settings.cache.url)
    assert url.scheme == "redis"
    host = url.hostname or ""
    service = _one("Service", host.split(".")[0])
    assert host == service["metadata"]["name"] or host.startswith(
        f"{service['metadata']['name']}."
    ), host
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 6379)]
    assert _selects(service["spec"]["selector"], REDIS_POD["metadata"]["labels"])
    assert not _selects(service["spec"]["selector"], GATEWAY_POD["metadata"]["labels"])
    assert _container_port(REDIS_CONTAINER, port["targetPort"]) == 6379


def test_redis_is_a_cache_that_persists_nothing() -> None:
    argv = _argv(REDIS_CONTAINER)
    assert argv[0] == "redis-server"
    assert _flag(argv, "--save") == ""
    assert _flag(argv, "--appendonly") == "no"
    image = REDIS_CONTAINER["image"]
    if not image.startswith("redis:"):  # only the official image's entrypoint disables it
        assert _flag(argv, "--protected-mode") == "no", shlex.join(argv)
