"""Static checks of the Kubernetes example in deploy/kubernetes/ (no cluster needed).

Every manifest is validated against the Kubernetes API's own schemas with `kubernetes-validate`
(strict: an unknown or misspelt field fails; the schemas ship in the package, so this runs
offline), for the oldest and the newest Kubernetes version below. Then what no schema knows:
the manifests must agree with each other (Services, selectors, volumes, ConfigMaps and Secret
by name) and with the code (settings names and values, the web port, `/ready`, the CLI).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from agents.runtime.settings import Settings, SettingsError, known_variables
from agents.tools.cli import parser
from streams.merchants.catalog import load_merchants

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy/kubernetes"
KUSTOMIZATION = KUBE / "kustomization.yaml"
SECRET_EXAMPLE = KUBE / "secrets.example.yaml"
DOCS = REPO / "docs/kubernetes.md"
DOCKERFILE = REPO / "Dockerfile"
#: The oldest and the newest Kubernetes whose schemas the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
NEXTBEST_VAR = re.compile(r"\bNEXTBEST_[A-Z0-9_]*[A-Z0-9]\b")
DEPENDENT_VAR = re.compile(r"\$\((\w+)\)")  # Kubernetes' $(VAR) in an env value
A_TOKEN = "0123456789abcdef0123456789abcdef"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = sorted(p for p in KUBE.glob("*.yaml") if p != KUSTOMIZATION)


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load(KUSTOMIZATION.read_text())


@pytest.fixture(scope="module")
def resources(kustomization: dict) -> dict[tuple[str, str], dict]:
    """(kind, name) -> manifest, for everything `kubectl apply -k` applies."""
    found = {}
    for name in kustomization["resources"]:
        for doc in documents(KUBE / name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


@pytest.fixture(scope="module")
def statefulset(resources: dict) -> dict:
    (workers,) = [doc for (kind, _), doc in resources.items() if kind == "StatefulSet"]
    return workers


@pytest.fixture(scope="module")
def worker(statefulset: dict) -> dict:
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def secret_example() -> dict:
    (secret,) = documents(SECRET_EXAMPLE)
    return secret


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def literal_env(container: dict) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}


def env_sources(container: dict, resources: dict, secret: dict) -> dict[str, str]:
    """What the container's envFrom brings in: the ConfigMaps' data and the Secret's."""
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(resources[("ConfigMap", source["configMapRef"]["name"])]["data"])
        else:
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            env.update(secret["stringData"])
    return env


def pod_env(container: dict, resources: dict, secret: dict, pod: str, namespace: str) -> dict:
    """The worker's environment in pod ``pod``: envFrom, then env (which wins), with the
    downward API's fields and ``$(VAR)`` references resolved as the kubelet does (a reference
    to a variable defined later in the list stays as it is)."""
    env = env_sources(container, resources, secret)
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    for var in container["env"]:
        if "valueFrom" in var:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            value = var["value"]
            env[var["name"]] = DEPENDENT_VAR.sub(lambda m: env.get(m[1], m[0]), value)
    return env


def with_real_tokens(secret: dict) -> dict:
    """The example Secret with its placeholder replaced, as a user does before applying it."""
    filled = copy.deepcopy(secret)
    for key, value in filled["stringData"].items():
        filled["stringData"][key] = value.replace("change-me", A_TOKEN)
    return filled


def mounts(container: dict) -> dict[str, dict]:
    return {mount["mountPath"]: mount for mount in container["volumeMounts"]}


# ---------------------------------------------------------------------------- schemas


def test_kustomization_applies_every_manifest_but_the_secret_example(kustomization: dict) -> None:
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in MANIFESTS if p != SECRET_EXAMPLE)
    assert SECRET_EXAMPLE.name not in listed, "tokens must not be applied from git"
    assert "secrets.yaml" in (REPO / ".gitignore").read_text().splitlines(), "its filled copy"
    assert kustomization["namespace"]
    namespaces = [doc for doc in documents(KUBE / "namespace.yaml") if doc["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == [kustomization["namespace"]]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} {where}: {exc.message}")


def test_schema_validation_catches_a_misspelt_nested_field(statefulset: dict) -> None:
    broken = copy.deepcopy(statefulset)
    (container,) = broken["spec"]["template"]["spec"]["containers"]
    container["readinessProbe"]["httpGet"]["paht"] = container["readinessProbe"]["httpGet"].pop(
        "path"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not here")
def test_kustomize_renders_what_the_schemas_accept(kustomization: dict, resources: dict) -> None:
    """What `kubectl apply -k` would send: every object in the namespace, the image renamed."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in docs} == set(resources)
    (image,) = kustomization["images"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"]
        if doc["kind"] in ("StatefulSet", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert container["image"] == f"{image['newName']}:{image['newTag']}"


# ---------------------------------------------------------------------------- the workers


def test_statefulset_is_named_through_the_headless_service(
    resources: dict, statefulset: dict
) -> None:
    service = resources[("Service", statefulset["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None", "the StatefulSet's service must be headless"
    assert service["spec"]["publishNotReadyAddresses"] is True, (
        "a worker still recovering must stay reachable by the others' forwarding"
    )
    assert selects(service["spec"]["selector"], pod_labels(statefulset))
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert selects(statefulset["spec"]["selector"]["matchLabels"], pod_labels(statefulset))


def test_each_pod_advertises_its_own_reachable_url(
    kustomization: dict, resources: dict, statefulset: dict, worker: dict, secret_example: dict
) -> None:
    names = [var["name"] for var in worker["env"]]
    advertised = names.index("NEXTBEST_WEB_ADVERTISED_URL")
    for needed in set(DEPENDENT_VAR.findall(literal_env(worker)["NEXTBEST_WEB_ADVERTISED_URL"])):
        assert names.index(needed) < advertised, f"$({needed}) must be defined before it is used"
    namespace, service = kustomization["namespace"], statefulset["spec"]["serviceName"]
    secret = with_real_tokens(secret_example)
    urls = []
    for ordinal in range(statefulset["spec"]["replicas"]):
        pod = f"{statefulset['metadata']['name']}-{ordinal}"
        settings = Settings.from_env(pod_env(worker, resources, secret, pod, namespace))
        url = settings.advertised_url()
        assert url == f"http://{pod}.{service}.{namespace}.svc.cluster.local:{settings.web_port}"
        urls.append(url)
    assert len(set(urls)) == len(urls)


def test_web_port_probes_and_scrape_annotations(
    resources: dict, statefulset: dict, worker: dict, secret_example: dict
) -> None:
    settings = Settings.from_env(
        pod_env(worker, resources, with_real_tokens(secret_example), "pod-0", "ns")
    )
    assert settings.web_host == "0.0.0.0", "the pod must listen on its own address"
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports == {"web": settings.web_port}
    readiness = worker["readinessProbe"]["httpGet"]
    assert readiness == {"path": "/ready", "port": "web"}
    for probe in ("livenessProbe", "startupProbe"):
        assert worker[probe]["httpGet"] == {"path": "/metrics", "port": "web"}, probe
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.web_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_api_service_spreads_over_the_workers(resources: dict, statefulset: dict) -> None:
    api = resources[("Service", "nextbest-api")]
    assert api["spec"]["type"] == "ClusterIP"
    assert selects(api["spec"]["selector"], pod_labels(statefulset))
    assert [port["targetPort"] for port in api["spec"]["ports"]] == ["web"]


def test_disruption_budget_takes_one_worker_at_a_time(resources: dict, statefulset: dict) -> None:
    (budget,) = [doc for (kind, _), doc in resources.items() if kind == "PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == statefulset["spec"]["selector"]


def test_volumes_state_per_pod_models_shared_merchants_read_only(
    resources: dict, statefulset: dict, worker: dict, secret_example: dict
) -> None:
    env = pod_env(worker, resources, with_real_tokens(secret_example), "pod-0", "ns")
    settings = Settings.from_env(env)
    by_path = mounts(worker)
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    templates = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}

    state = by_path[str(settings.state_dir)]
    assert state["name"] in templates, "RocksDB state must be on the pod's own volume claim"
    assert templates[state["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]

    models = volumes[by_path[str(settings.models_dir)]["name"]]
    claim = resources[("PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every worker mounts the models"

    merchants_path = Path(settings.merchants_path)
    mount = by_path[str(merchants_path.parent)]
    assert mount.get("readOnly") is True
    config_map = resources[("ConfigMap", volumes[mount["name"]]["configMap"]["name"])]
    assert merchants_path.name in config_map["data"]

    pod_security = statefulset["spec"]["template"]["spec"]["securityContext"]
    uid = re.search(r"useradd [^&]*--uid (\d+)", DOCKERFILE.read_text())
    assert uid and pod_security["runAsUser"] == int(uid[1]), "the image's user"
    assert pod_security["fsGroup"] == pod_security["runAsGroup"], "volumes writable by it"
    assert pod_security["runAsNonRoot"] is True


def test_merchants_config_map_is_the_deploy_merchants_file(resources: dict, tmp_path: Path) -> None:
    text = resources[("ConfigMap", "nextbest-merchants")]["data"]["merchants.yaml"]
    deployed = REPO / "deploy/merchants.yaml"
    assert yaml.safe_load(text) == yaml.safe_load(deployed.read_text())
    copy_path = tmp_path / "merchants.yaml"
    copy_path.write_text(text)
    assert load_merchants(copy_path) == load_merchants(deployed)


def test_resources_are_set(statefulset: dict, resources: dict) -> None:
    workloads = [doc for (kind, _), doc in resources.items() if kind in ("StatefulSet", "Job")]
    assert len(workloads) == 2
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            requested = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requested), container["name"]
            assert "memory" in container["resources"]["limits"], container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# ---------------------------------------------------------------------------- settings


def test_every_nextbest_variable_is_a_setting(
    resources: dict, worker: dict, secret_example: dict
) -> None:
    known = set(known_variables())
    env = {var["name"] for var in worker["env"]}
    from_sources = env_sources(worker, resources, secret_example)
    for name in env | set(from_sources):
        if name.startswith("NEXTBEST_"):
            assert name in known, f"{name} is not a setting"
    assert not env & set(from_sources), "a variable in env and in envFrom: env silently wins"
    texts = [DOCS.read_text(), *(p.read_text() for p in MANIFESTS), KUSTOMIZATION.read_text()]
    for text in texts:
        for name in NEXTBEST_VAR.findall(text):
            assert name in known, f"{name} is not a setting"


def test_partitions_leave_room_for_every_replica(
    resources: dict, statefulset: dict, worker: dict, secret_example: dict
) -> None:
    env = pod_env(worker, resources, with_real_tokens(secret_example), "pod-0", "ns")
    settings = Settings.from_env(env)
    assert settings.partitions >= statefulset["spec"]["replicas"], "idle workers"
    assert settings.standby_replicas >= 1, "a hand-over would replay the changelog"


def test_secret_example_placeholder_is_refused(secret_example: dict) -> None:
    """Applied unchanged, the example's placeholder stops the workers, naming the variable."""
    tokens = secret_example["stringData"]
    assert set(tokens) <= set(known_variables())
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(tokens)
    assert refused.value.variable == "NEXTBEST_API_TOKENS"
    assert Settings.from_env(with_real_tokens(secret_example)["stringData"]).merchant_tokens()


def test_topics_job_runs_the_image_and_settings_of_the_workers(
    resources: dict, statefulset: dict, worker: dict
) -> None:
    (job,) = [doc for (kind, _), doc in resources.items() if kind == "Job"]
    (topics,) = job["spec"]["template"]["spec"]["containers"]
    assert topics["image"] == worker["image"]
    assert topics["envFrom"] == worker["envFrom"], "the same broker, partitions and topics"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    for container, command in ((topics, "topics"), (worker, "worker")):
        assert container["args"] == [command]
        assert parser().parse_args(container["args"]).command == command
