"""deploy/k8s/: every manifest validates against Kubernetes' own schemas (strict: an unknown or
misspelt field fails), and the pieces refer to each other correctly — probes, selectors, the
autoscaler's and disruption budget's targets, the config the pods mount, the secrets it names
and the Redis its cache points at. No cluster needed: schemas from kubernetes-validate."""

from __future__ import annotations

import copy
import json
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
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import parse_settings
from tests.conftest import MakeGateway
from tests.support import http

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


def test_a_terminating_pod_keeps_serving_until_it_leaves_the_endpoints() -> None:
    """SIGTERM closes the listener (gateway/serving.py answers what was already accepted);
    the preStop sleep keeps it open while the Service stops routing new connections here, and
    the grace period covers the sleep plus a request's whole deadline."""
    command = GATEWAY_CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 5
    grace = GATEWAY_POD["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(command[1]) + 10 + 1  # + deadline_seconds (10) + the idle grace


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


# deploy/grafana/orggraph.json: an importable dashboard whose every query names metrics a real
# gateway serves on /metrics (so renaming a metric breaks this test, not the dashboard).

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "orggraph.json"
DASHBOARD = json.loads(GRAFANA.read_text())
QUERY_PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and"}
PROMQL_WORDS |= {"or", "unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, grouping clauses, function calls and keywords are taken out."""
    rest = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    rest = re.sub(r"\{[^{}]*\}|\[[^\[\]]*\]", " ", rest)
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", rest)
    names = re.findall(r"(?<![\w$.:])([A-Za-z_:][\w:]*)\b(?!\s*\()", rest)
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def test_promql_metric_names() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (provider, le) (rate(a_bucket{job=~"$job", x="y{z}"}'
        "[$__rate_interval]))) / on (provider) group_left sum without (tenant) (b_total offset"
        " 5m) > bool 1e3"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total"}
    assert promql_metric_names("max by (provider) (orggraph_circuit_state)") == {
        "orggraph_circuit_state"
    }


def _exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(every series name /metrics can carry, by each family's type; the sample names present)."""
    exposed: set[str] = set()
    present: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }
    for family in text_string_to_metric_families(text):
        exposed |= {family.name + s for s in suffixes.get(family.type, ("",))}
        present |= {sample.name for sample in family.samples}
    return exposed | present, present


@pytest.fixture
def gateway_metric_names(make_gateway: MakeGateway) -> tuple[set[str], set[str]]:
    """The series names of a real gateway's /metrics after a miss, a cached repeat, a bad
    query and an unauthenticated request."""
    gateway = make_gateway(cache={"backend": "memory"})
    query = "{ organizations(first: 3, providers: [PLANETSCALE]) { nodes { name } } }"
    assert gateway.query(query).headers["x-orggraph-cache"] == "miss"
    assert gateway.query(query).headers["x-orggraph-cache"] == "hit"
    gateway.query("{ nope }")
    gateway.query(query, tenant=None)
    response = http.get(gateway.url + "/metrics")
    assert response.status_code == 200
    return _exposed_names(response.text)


def test_dashboard_is_importable_grafana_json() -> None:
    assert DASHBOARD["schemaVersion"] >= 36
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["id"] is None
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), ids
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and all(isinstance(v, int) for v in grid.values())
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        columns = range(grid["x"], grid["x"] + grid["w"])
        mine = {(x, y) for x in columns for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in QUERY_PANELS:
        assert panel["title"] and panel["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_dashboard_charts_every_gateway_metric() -> None:
    used = {n for p in QUERY_PANELS for t in p["targets"] for n in promql_metric_names(t["expr"])}
    wanted = {
        "orggraph_requests_total",
        "orggraph_request_duration_seconds_bucket",
        "orggraph_upstream_requests_total",
        "orggraph_upstream_request_duration_seconds_bucket",
        "orggraph_upstream_retries_total",
        "orggraph_circuit_state",
        "orggraph_cache_requests_total",
        "orggraph_coalesced_calls_total",
        "orggraph_rate_limited_total",
    }
    assert wanted <= used, wanted - used
    (circuit,) = [p for p in QUERY_PANELS if "orggraph_circuit_state" in str(p["targets"])]
    assert circuit["type"] in {"state-timeline", "stat"}
    (mapping,) = circuit["fieldConfig"]["defaults"]["mappings"]
    assert {k: v["text"] for k, v in mapping["options"].items()} == {
        "0": "closed",
        "1": "half-open",
        "2": "open",
    }


def test_every_dashboard_query_uses_metrics_the_gateway_serves(
    gateway_metric_names: tuple[set[str], set[str]],
) -> None:
    exposed, present = gateway_metric_names
    # The per-type names are the ones prometheus_client really serves, suffixes included.
    assert {
        "orggraph_requests_total",
        "orggraph_request_duration_seconds_bucket",
        "orggraph_request_duration_seconds_count",
        "orggraph_request_duration_seconds_sum",
        "orggraph_upstream_request_duration_seconds_bucket",
        "orggraph_circuit_state",
    } <= present
    for panel in QUERY_PANELS:
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, target["expr"]
            assert names <= exposed, f"{panel['title']}: {names - exposed} not on /metrics"
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+)(\{.*\})?, *\w+\)", variable["definition"])
            assert found and found.group(1) in exposed, variable["definition"]


# docker-compose.yml with deploy/compose/offline.yml (Debian-built images) and check.yml
# (`make compose-check`): the pieces that only a real engine would otherwise catch.

ROOT = GRAFANA.parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OFFLINE = yaml.safe_load((ROOT / "deploy" / "compose" / "offline.yml").read_text())
CHECK = yaml.safe_load((ROOT / "deploy" / "compose" / "check.yml").read_text())


def test_offline_override_runs_every_service_from_local_images() -> None:
    assert set(OFFLINE["services"]) == set(COMPOSE["services"])
    for name, service in OFFLINE["services"].items():
        base = COMPOSE["services"][name]
        if "build" in base:
            assert service["build"]["args"]["BASE_IMAGE"].endswith(":-orggraph-base:bookworm}")
        else:
            assert service["image"].endswith(":-orggraph-base:bookworm}"), name
    redis = OFFLINE["services"]["redis"]["command"]
    assert redis[0] == "redis-server" and _flag(redis, "--protected-mode") == "no"
    assert _flag(redis, "--save") == "" and _flag(redis, "--appendonly") == "no"
    assert OFFLINE["services"]["lb"]["command"] == ["nginx", "-g", "daemon off;"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim\n" in dockerfile
    assert dockerfile.count("FROM ${BASE_IMAGE}") == 2


def test_nginx_starts_after_every_replica_is_ready_and_check_names_the_replica() -> None:
    gateway = COMPOSE["services"]["gateway"]
    assert gateway["deploy"]["replicas"] == 3
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
    assert COMPOSE["services"]["lb"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "include /etc/nginx/orggraph.d/*.conf;" in nginx
    (mount,) = CHECK["services"]["lb"]["volumes"]
    source, target, _ = mount.split(":")
    assert target.startswith("/etc/nginx/orggraph.d/") and target.endswith(".conf")
    assert "$upstream_addr" in (ROOT / source).read_text()
