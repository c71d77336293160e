"""Static checks of the Docker/Compose deployment (no Docker engine, no network needed).

docker-compose.yml, .env.example, Dockerfile, .dockerignore, deploy/ (the API proxy,
Prometheus, Grafana, merchants) and docs/docker.md must agree with each other and with the code:
settings names, the web port, the broker address, the metric names the worker exports.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from agents.runtime.settings import (
    TOKEN_SCOPES,
    WILDCARD_HOSTS,
    Settings,
    SettingsError,
    Topics,
    env_name,
)
from agents.web.api import FORWARD_TIMEOUT, FORWARDED

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
GRAFANA_DATASOURCES = REPO / "deploy/grafana/provisioning/datasources"
GRAFANA_DASHBOARD_PROVIDERS = REPO / "deploy/grafana/provisioning/dashboards"
DASHBOARD = REPO / "deploy/grafana/dashboards/nextbest.json"
DOCS = REPO / "docs/docker.md"
ENV_EXAMPLE = REPO / ".env.example"
GITIGNORE = REPO / ".gitignore"
PROXY_CONFIG = REPO / "deploy/nginx/nextbest-api.conf"
DOCKER_DNS = "127.0.0.11"  # Docker's embedded DNS server, inside every container

SERVICES = {"kafka", "topics", "worker", "api", "prometheus", "grafana"}
TOKEN_VARS = {env_name(name) for name in (*TOKEN_SCOPES, "api_admin_token")}

# The documented Prometheus metrics of a worker (name as scraped -> type).
DOCUMENTED_METRICS = {
    "nextbest_events_total": "counter",
    "nextbest_dead_letters_total": "counter",
    "nextbest_output_errors_total": "counter",
    "nextbest_offers_total": "counter",
    "nextbest_notifications_total": "counter",
    "nextbest_messages_suppressed_total": "counter",
    "nextbest_decision_latency_seconds": "histogram",
    "nextbest_state_customers": "gauge",
    "nextbest_state_bytes": "gauge",
    "nextbest_consumer_lag": "gauge",
    "nextbest_batch_events": "histogram",
}
# Also exported by agents/runtime/metrics.py; the dashboard shows them too.
EXTRA_METRICS = {
    "nextbest_duplicate_events_total": "counter",
    "nextbest_rerouted_events_total": "counter",
    # next-purchase model serving (agents/runtime/model_metrics.py)
    "nextbest_model_info": "gauge",
    "nextbest_model_reloads_total": "counter",
    "nextbest_model_load_errors_total": "counter",
    "nextbest_model_fallbacks_total": "counter",
    "nextbest_model_predictions_total": "counter",
    "nextbest_model_inference_seconds": "histogram",
    "nextbest_model_inference_cpu_seconds": "histogram",
    # promotion policy (agents/runtime/promotion_metrics.py)
    "nextbest_promo_decisions_total": "counter",
    "nextbest_promo_blocked_actions_total": "counter",
    "nextbest_promo_rewards_total": "counter",
    "nextbest_promo_conversions_total": "counter",
    "nextbest_promo_revenue_total": "counter",
    "nextbest_promo_discount_cost_total": "counter",
    "nextbest_promo_profit": "summary",
    "nextbest_promo_profit_squares_total": "counter",
    "nextbest_promo_incremental_profit_per_decision": "gauge",
    "nextbest_promo_budget_available": "gauge",
    # journeys (agents/outreach.py, streams/outreach/journeys.py) and the REST API
    # (agents/web/api.py)
    "nextbest_journey_steps_total": "counter",
    "nextbest_messages_held_total": "counter",
    "nextbest_messages_released_total": "counter",
    "nextbest_journey_timers_pending": "gauge",
    "nextbest_api_requests_total": "counter",
    "nextbest_api_request_duration_seconds": "histogram",
}
METRICS = {**DOCUMENTED_METRICS, **EXTRA_METRICS}
# Issue 19's metrics (docs/briefs: i19-common), defined by its engagement-actions and churn parts,
# which the dashboard queries before they are merged: name -> (type, labels). Once exported
# they must have this type and these labels.
PENDING_METRICS = {
    "nextbest_engagement_actions_ranked_total": ("counter", ("merchant", "action")),
    "nextbest_engagement_action_feedback_total": (
        "counter",
        ("merchant", "action", "interaction"),
    ),
    "nextbest_churn_risk_score": ("histogram", ("merchant",)),
    "nextbest_retention_journey_steps_total": ("counter", ("merchant", "arm")),
}
KNOWN_METRICS = {**METRICS, **{name: kind for name, (kind, _) in PENDING_METRICS.items()}}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

SETTINGS_VARS = {env_name(f.name) for f in fields(Settings) if f.name != "topics"}
TOPIC_VARS = {f"NEXTBEST_TOPIC_{f.name.upper()}" for f in fields(Topics)}
NEXTBEST_VAR = re.compile(r"\bNEXTBEST_[A-Z0-9_]*[A-Z0-9]\b")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
METRIC_NAME = re.compile(r"\bnextbest_[a-z0-9_]+\b")


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def interpolate(value: object) -> str:
    """Resolve Compose ``${VAR:-default}`` with an empty environment (defaults apply)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def bind_mounts(service: dict) -> dict[str, tuple[Path, bool]]:
    """Container path -> (repo path, read_only) for every ``./host:container[:ro]`` volume."""
    mounts = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if len(parts) >= 2 and parts[0].startswith("."):
            mounts[parts[1]] = ((REPO / parts[0]).resolve(), parts[2:] == ["ro"])
    return mounts


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
    return host, int(port)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for statement in logical:
        instruction, _, args = statement.partition(" ")
        pairs.append((instruction.upper(), args.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, args in stage:
        if instruction == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def dashboard_exprs(dashboard: dict, templating: bool = True) -> list[str]:
    """PromQL of every panel target (and of the template variables, if ``templating``)."""
    exprs = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []) if templating else []:
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def scraped_name(name: str) -> str | None:
    """Map a series name used in PromQL to its metric in METRICS, or None if unknown."""
    if name in KNOWN_METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and KNOWN_METRICS.get(base) == "histogram":
            return base
        if base != name and suffix != "_bucket" and KNOWN_METRICS.get(base) == "summary":
            return base
    return None


def metric_labels() -> dict[str, tuple[str, ...]]:
    """Label names of every known metric (as scraped): the worker registry's, else
    ``PENDING_METRICS``'."""
    from agents.runtime.metrics import REGISTRY

    labels = {name: pending for name, (_, pending) in PENDING_METRICS.items()}
    # prometheus-client keeps a collector's label names private; no public API lists them
    for collector, names in REGISTRY._collector_to_names.items():
        for name in names:
            labels[name] = tuple(getattr(collector, "_labelnames", ()))
    return labels


def web_port(services: dict) -> int:
    return int(service_env(services["worker"])["NEXTBEST_WEB_PORT"])


NGINX_TOKEN = re.compile(r'"[^"]*"|[{};]|[^\s{};"]+')


def nginx_config(text: str) -> list[tuple[str, list[str], list | None]]:
    """nginx's configuration syntax as (directive, arguments, block or None), blocks nested;
    comments dropped, quoted arguments unquoted. Raises ValueError on unbalanced braces or a
    directive without its ``;``."""
    tokens = NGINX_TOKEN.findall(re.sub(r"#[^\n]*", "", text))
    position = 0

    def block(closed_by: str | None) -> list:
        nonlocal position
        entries, words = [], []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                entries.append((words[0], [w.strip('"') for w in words[1:]], None))
                words = []
            elif token == "{":
                entries.append((words[0], [w.strip('"') for w in words[1:]], block("}")))
                words = []
            elif token == "}":
                if closed_by != "}" or words:
                    raise ValueError(f"unexpected }} after {words}")
                return entries
            else:
                words.append(token)
        if closed_by or words:
            raise ValueError("unterminated block or directive")
        return entries

    return block(None)


def directives(entries: list, name: str) -> list[tuple[list[str], list | None]]:
    return [(args, body) for directive, args, body in entries if directive == name]


def dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file as Compose reads them (comments and blanks skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


# ---------------------------------------------------------------------------- compose


def test_compose_has_expected_services(compose: dict) -> None:
    assert "version" not in compose, "Compose spec files carry no top-level 'version'"
    assert set(compose["services"]) == SERVICES
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if ":" in volume and not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: named volume {source} not declared"


def test_worker_is_scalable(services: dict) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name breaks --scale worker=N"
    assert "ports" not in worker, "a fixed host port breaks --scale worker=N"
    assert worker["command"] == ["worker"]
    assert str(web_port(services)) in [str(p) for p in worker.get("expose", [])]
    # RocksDB state: one anonymous volume per replica (a shared named volume would make
    # replicas fight over the same RocksDB directories).
    state_dir = service_env(worker)["NEXTBEST_STATE_DIR"]
    assert state_dir in worker["volumes"], "state dir must be an anonymous per-replica volume"


def test_startup_order(services: dict) -> None:
    kafka, topics, worker = services["kafka"], services["topics"], services["worker"]
    assert kafka["healthcheck"]["test"], "kafka needs a healthcheck for service_healthy"
    assert topics["command"] == ["topics"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics.get("restart") == "no", "topics is a one-shot job"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert topics["image"] == worker["image"], "topics and worker run the same image"
    assert topics["build"] == worker["build"]


def test_referenced_files_exist(services: dict) -> None:
    for name in ("topics", "worker"):
        build = services[name]["build"]
        context = REPO / build["context"]
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    for name, service in services.items():
        for container_path, (host_path, _) in bind_mounts(service).items():
            assert host_path.exists(), f"{name}: {host_path} (mounted at {container_path})"
            assert REPO in host_path.parents, f"{name}: {host_path} is outside the repo"
    assert sorted(GRAFANA_DATASOURCES.glob("*.yml")), "no Grafana datasource provisioning"
    assert sorted(GRAFANA_DASHBOARD_PROVIDERS.glob("*.yml")), "no Grafana dashboard provider"
    assert DASHBOARD.is_file() and DOCS.is_file()


def test_config_mounts_are_read_only(services: dict) -> None:
    for name, service in services.items():
        for container_path, (host_path, read_only) in bind_mounts(service).items():
            assert read_only, f"{name}: {host_path} -> {container_path} should be :ro"


def test_merchants_override_is_mounted_and_loads(services: dict) -> None:
    from streams.merchants.catalog import load_merchants

    for name in ("topics", "worker"):
        path = service_env(services[name])["NEXTBEST_MERCHANTS_PATH"]
        host_path, _ = bind_mounts(services[name])[path]
        assert host_path == (REPO / "deploy/merchants.yaml").resolve()
    merchants = load_merchants(REPO / "deploy/merchants.yaml")
    assert merchants, "deploy/merchants.yaml defines no merchant"


def test_nextbest_env_is_valid_settings(services: dict) -> None:
    for name in ("topics", "worker"):
        env = service_env(services[name])
        settings = Settings.from_env(env)
        assert settings.web_host == "0.0.0.0", "the worker must listen on all container interfaces"
        assert str(settings.state_dir) == "/var/lib/nextbest"
        assert settings.security_protocol == "PLAINTEXT"
    # The topics job sees the worker's broker, partitions and topics; only the worker gets the
    # API tokens and its volumes' settings.
    topics_env, worker_env = service_env(services["topics"]), service_env(services["worker"])
    assert topics_env.items() <= worker_env.items()
    assert not TOKEN_VARS & set(topics_env), "the topics job needs no API token"


def test_every_nextbest_variable_is_a_setting() -> None:
    texts = {
        COMPOSE_FILE: COMPOSE_FILE.read_text(),
        DOCKERFILE: DOCKERFILE.read_text(),
        DOCS: DOCS.read_text(),
        ENV_EXAMPLE: ENV_EXAMPLE.read_text(),
    }
    seen = set()
    for path, text in texts.items():
        for var in NEXTBEST_VAR.findall(text):
            seen.add(var)
            assert var in SETTINGS_VARS | TOPIC_VARS, f"{path.name}: {var} is not a setting"
    # The docs cover the SASL/TLS settings of a real cluster.
    security = {
        "NEXTBEST_SECURITY_PROTOCOL",
        "NEXTBEST_SASL_MECHANISM",
        "NEXTBEST_SASL_USERNAME",
        "NEXTBEST_SASL_PASSWORD",
        "NEXTBEST_SSL_CAFILE",
    }
    assert security <= set(NEXTBEST_VAR.findall(texts[DOCS]))
    assert seen


def test_broker_url_points_at_kafka_listener(services: dict) -> None:
    kafka_env = service_env(services["kafka"])
    settings = Settings.from_env(service_env(services["worker"]))
    host, port = host_port(settings.bootstrap_servers)
    assert host == "kafka", "the broker host must be the kafka service name"
    advertised = {
        listener.split("://")[0]: host_port(listener)
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert (host, port) in advertised.values()
    listener_name = next(n for n, hp in advertised.items() if hp == (host, port))
    bound = {
        listener.split("://")[0]: host_port(listener)[1]
        for listener in kafka_env["KAFKA_LISTENERS"].split(",")
    }
    assert bound[listener_name] == port
    protocols = dict(
        item.split(":") for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert protocols[listener_name] == settings.security_protocol
    assert f"localhost:{port}" in " ".join(services["kafka"]["healthcheck"]["test"])


def test_kafka_is_single_node_kraft(services: dict) -> None:
    env = service_env(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:3.9.")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == env["KAFKA_NODE_ID"]
    bound = {lst.split("://")[0]: host_port(lst)[1] for lst in env["KAFKA_LISTENERS"].split(",")}
    assert int(voter.rpartition(":")[2]) == bound[controller]
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "invalid KRaft id"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env[key] == "1", f"{key} must be 1 on a single broker"
    worker_settings = Settings.from_env(service_env(services["worker"]))
    assert int(env["KAFKA_NUM_PARTITIONS"]) == worker_settings.partitions
    assert worker_settings.replication_factor == 1
    assert f"kafka-data:{env['KAFKA_LOG_DIRS']}" in services["kafka"]["volumes"]


# ---------------------------------------------------------------------------- the API entry


def test_api_has_one_entry_on_the_loopback(services: dict) -> None:
    """Only the `api` proxy publishes the API, on 127.0.0.1; the workers publish nothing."""
    published = {
        name: [interpolate(port) for port in service.get("ports", [])]
        for name, service in services.items()
    }
    assert "ports" not in services["worker"]
    (api_port,) = published["api"]
    host_ip, host_port_number, container_port = api_port.split(":")
    assert host_ip == "127.0.0.1", "the API must not listen on every host interface"
    other_host_ports = {
        p.split(":")[-2] for name, ports in published.items() if name != "api" for p in ports
    }
    assert host_port_number not in other_host_ports
    (listen,) = directives(
        directives(nginx_config(PROXY_CONFIG.read_text()), "server")[0][1], "listen"
    )
    assert listen[0] == [container_port], "the published port is not the one nginx listens on"
    mounted, read_only = bind_mounts(services["api"])["/etc/nginx/conf.d/default.conf"]
    assert mounted == PROXY_CONFIG.resolve() and read_only
    # `server ... resolve` in an upstream is in open-source nginx from 1.27.3 on.
    image, _, tag = services["api"]["image"].partition(":")
    assert image == "nginx"
    assert tuple(int(part) for part in tag.split("-")[0].split(".")) >= (1, 27, 3)


def test_proxy_spreads_over_every_worker_replica(services: dict) -> None:
    config = nginx_config(PROXY_CONFIG.read_text())
    (resolver,) = directives(config, "resolver")
    assert resolver[0][0] == DOCKER_DNS, "names must be resolved by Docker's DNS at run time"
    assert any(arg.startswith("valid=") for arg in resolver[0])
    (upstream,) = directives(config, "upstream")
    upstream_name, upstream_body = upstream[0][0], upstream[1]
    assert directives(upstream_body, "zone"), "`resolve` needs the upstream in shared memory"
    (server,) = directives(upstream_body, "server")
    address, *parameters = server[0]
    assert "resolve" in parameters, "without `resolve` nginx resolves `worker` once, at start"
    host, _, port = address.partition(":")
    assert host == "worker" and host in services
    assert int(port) == web_port(services), "the proxy must reach the workers' web port"

    (server_block,) = directives(config, "server")
    (location,) = directives(server_block[1], "location")
    assert location[0] == ["/"]
    body = location[1]
    assert directives(body, "proxy_pass")[0][0] == [f"http://{upstream_name}"]
    headers = {args[0]: args[1] for args, _ in directives(body, "proxy_set_header")}
    assert headers.get(FORWARDED) == "", f"a client's {FORWARDED} must not reach a worker"
    (read_timeout,) = directives(body, "proxy_read_timeout")
    assert int(read_timeout[0][0].removesuffix("s")) > FORWARD_TIMEOUT.total
    (body_limit,) = directives(server_block[1], "client_max_body_size")
    size = body_limit[0][0]
    limit = int(size[:-1]) * {"k": 1024, "m": 1024**2}[size[-1].lower()]
    assert limit >= Settings().api_max_body_bytes, "the proxy would refuse bodies workers take"


def test_nginx_config_parser_refuses_broken_syntax() -> None:
    assert nginx_config("a b; c { d e; }") == [("a", ["b"], None), ("c", [], [("d", ["e"], None)])]
    for broken in ("a b", "c { d e; ", "c { d e }", "a; }"):
        with pytest.raises(ValueError):
            nginx_config(broken)


# ---------------------------------------------------------------------------- workers, scaled


def test_scaled_workers_advertise_distinct_urls(
    services: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas share one environment: each must still advertise a URL of its own (its
    container's host name), or Faust's partition owners collapse into one entry."""
    worker = services["worker"]
    assert "hostname" not in worker, "a fixed hostname makes every replica advertise the same URL"
    env = service_env(worker)
    assert not env.get("NEXTBEST_WEB_ADVERTISED_URL"), "one URL for all replicas"
    settings = Settings.from_env(env)
    assert settings.web_host in WILDCARD_HOSTS
    container_ids = ["3f1c2a9b8d7e", "a0b1c2d3e4f5", "9e8d7c6b5a43"]  # Docker's default names
    urls = []
    for container_id in container_ids:
        monkeypatch.setattr("socket.gethostname", lambda name=container_id: name)
        urls.append(settings.advertised_url())
    assert urls == [f"http://{cid}:{web_port(services)}" for cid in container_ids]


def test_models_volume_is_shared_by_every_worker(compose: dict, services: dict) -> None:
    """One named volume for NEXTBEST_MODELS_DIR: a model trained through any replica's API is
    served by all; the image owns the folder so that the volume is writable by its user."""
    worker = services["worker"]
    models_dir = service_env(worker)["NEXTBEST_MODELS_DIR"]
    sources = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in worker["volumes"]
        if volume.count(":") >= 1
    }
    source = sources[models_dir]
    assert not source.startswith((".", "/")), "a named volume, not a bind mount"
    assert source in compose["volumes"]
    state_dir = service_env(worker)["NEXTBEST_STATE_DIR"]
    assert Path(models_dir) != Path(state_dir) and Path(state_dir) not in Path(models_dir).parents

    stage = final_stage()
    env = dockerfile_env(stage)
    assert env["NEXTBEST_MODELS_DIR"] == models_dir
    assert models_dir in json.loads(dict(stage)["VOLUME"])
    user = dict(stage)["USER"].split(":")[0]
    runs = " ".join(args for ins, args in stage if ins == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(models_dir)}", runs)
    assert re.search(rf"chown {user}:{user} [^&]*{re.escape(models_dir)}", runs)


# ---------------------------------------------------------------------------- .env


def test_every_interpolation_has_a_default() -> None:
    """Compose parses the file without a .env: each ``${VAR}`` has a ``:-`` default."""
    found = list(INTERPOLATION.finditer(COMPOSE_FILE.read_text()))
    assert found
    for match in found:
        assert match.group(2) is not None, f"{match.group(0)} has no default"


def test_api_tokens_come_from_env(services: dict) -> None:
    env = services["worker"]["environment"]
    for var in TOKEN_VARS:
        assert env[var] == f"${{{var}:-}}", f"{var} must come from .env, empty by default"


def test_env_example_fills_compose_and_is_not_committed() -> None:
    example = dotenv(ENV_EXAMPLE)
    used = {name for name, _ in INTERPOLATION.findall(COMPOSE_FILE.read_text())}
    assert set(example) <= used, f"{sorted(set(example) - used)} set but not used by compose"
    assert set(example) >= TOKEN_VARS
    assert ".env" in GITIGNORE.read_text().splitlines(), "a .env with tokens must stay out of git"
    assert ".env" in DOCKERIGNORE.read_text().splitlines(), "... and out of the image"


def test_env_example_placeholders_are_refused_until_replaced() -> None:
    """The placeholder is no token: a worker started with it stops naming the variable; once
    the documented ``sed`` has put a fresh token in its place the settings load."""
    example = {k: v for k, v in dotenv(ENV_EXAMPLE).items() if k.startswith("NEXTBEST_")}
    placeholders = [var for var, value in example.items() if "change-me" in value]
    assert placeholders == ["NEXTBEST_API_TOKENS"]
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(example)
    assert refused.value.variable == "NEXTBEST_API_TOKENS"
    filled = {
        k: v.replace("change-me", "0123456789abcdef0123456789abcdef") for k, v in example.items()
    }
    tokens = Settings.from_env(filled).merchant_tokens()
    assert tokens == {
        "0123456789abcdef0123456789abcdef": ("uci-gift-shop", frozenset(TOKEN_SCOPES["api_tokens"]))
    }


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile_image_contract(services: dict) -> None:
    instructions = dockerfile_instructions()
    stage = final_stage()
    assert all(args.split()[0] == "python:3.11-slim" for ins, args in instructions if ins == "FROM")
    runs = [args for ins, args in instructions if ins == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at]
    install_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|&|$)", r))
    assert torch_at < install_at, "torch (CPU) must be installed before the package"

    last = {ins: args for ins, args in stage}
    assert json.loads(last["ENTRYPOINT"]) == ["nextbest"]
    assert json.loads(last["CMD"]) == ["worker"]
    assert last["USER"].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    env = dockerfile_env(stage)
    assert int(last["EXPOSE"]) == int(env["NEXTBEST_WEB_PORT"]) == web_port(services)
    assert env["NEXTBEST_STATE_DIR"] in json.loads(last["VOLUME"])
    assert env["NEXTBEST_STATE_DIR"] == service_env(services["worker"])["NEXTBEST_STATE_DIR"]
    assert env["NEXTBEST_WEB_HOST"] == "0.0.0.0"


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", "var", ".git", "**/__pycache__"):
        assert required in ignored, f".dockerignore lacks {required}"
    copies = [
        args
        for ins, args in dockerfile_instructions()
        if ins == "COPY" and not args.startswith("--from")
    ]
    assert copies
    for args in copies:
        sources = shlex.split(args)[:-1]
        for source in sources:
            if any(ch in source for ch in "*?["):
                continue  # optional glob (README.md*): may match nothing
            assert (REPO / source).exists(), f"COPY {source}: missing"
            for pattern in ignored:
                assert not fnmatch.fnmatch(source.rstrip("/"), pattern), (
                    f"COPY {source} is excluded by .dockerignore ({pattern})"
                )


# ---------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_every_worker_replica(services: dict) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_jobs = [
        job
        for job in jobs.values()
        if any("worker" in sd["names"] for sd in job.get("dns_sd_configs", []))
    ]
    assert len(worker_jobs) == 1
    job = worker_jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["type"] == "A" and sd["port"] == web_port(services)
    # The worker's healthcheck probes the same port.
    assert f":{web_port(services)}/metrics" in " ".join(services["worker"]["healthcheck"]["test"])

    prometheus = services["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mounted, _ = bind_mounts(prometheus)[config_flag.split("=", 1)[1]]
    assert mounted == PROMETHEUS_CONFIG.resolve()


# ---------------------------------------------------------------------------- Grafana


def test_grafana_provisioning_matches_mounts(services: dict) -> None:
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = "/etc/grafana/provisioning"
    assert mounts[f"{provisioning}/datasources"][0] == GRAFANA_DATASOURCES.resolve()
    assert mounts[f"{provisioning}/dashboards"][0] == GRAFANA_DASHBOARD_PROVIDERS.resolve()

    (datasource,) = yaml.safe_load(next(GRAFANA_DATASOURCES.glob("*.yml")).read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    prometheus_port = int(services["prometheus"]["ports"][0].split(":")[-1])
    assert host_port(datasource["url"]) == ("prometheus", prometheus_port)

    (provider,) = yaml.safe_load(next(GRAFANA_DASHBOARD_PROVIDERS.glob("*.yml")).read_text())[
        "providers"
    ]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir][0] == DASHBOARD.parent.resolve()
    home = service_env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_dashboard_is_valid_and_queries_only_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(next(GRAFANA_DATASOURCES.glob("*.yml")).read_text())
    uid = datasource["datasources"][0]["uid"]
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid, panel["title"]
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("{") == expr.count("}"), expr
            assert expr.count("[") == expr.count("]"), expr

    for expr in dashboard_exprs(dashboard):
        for name in METRIC_NAME.findall(expr):
            metric = scraped_name(name)
            assert metric, f"dashboard queries unknown metric {name!r} in {expr!r}"
            listing = expr.startswith("label_values(")  # a variable's values, not a plot
            if KNOWN_METRICS[metric] == "counter" and not listing:
                assert re.search(rf"(rate|increase)\({name}\b", expr), f"raw counter: {expr}"
    in_panels = {
        scraped_name(name)
        for expr in dashboard_exprs(dashboard, templating=False)
        for name in METRIC_NAME.findall(expr)
    }
    missing = set(KNOWN_METRICS) - in_panels
    assert not missing, f"no dashboard panel for {sorted(missing)}"


#: Panels that may query a merchant-labelled metric across merchants, and why.
ALL_MERCHANTS = {"Dead-letter ratio": "a dead letter names no merchant: over all the events"}
SELECTOR = re.compile(r"\b(nextbest_[a-z0-9_]+)(\{[^}]*\})?")


def test_dashboard_filters_every_merchant_labelled_metric_by_the_merchant_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    merchant = variables["merchant"]
    assert merchant["includeAll"] and merchant["allValue"] == ".*"
    labels = metric_labels()
    (source,) = METRIC_NAME.findall(merchant["query"]["query"])
    assert "merchant" in labels[scraped_name(source)]
    assert merchant["query"]["query"] == f"label_values({source}, merchant)"
    filtered = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name, selector in SELECTOR.findall(target["expr"]):
                if "merchant" not in labels[scraped_name(name)]:
                    assert "$merchant" not in selector, f"{name} has no merchant label"
                elif panel["title"] not in ALL_MERCHANTS:
                    assert 'merchant=~"$merchant"' in selector, (panel["title"], target["expr"])
                    filtered += 1
    assert filtered >= len([n for n, (_, ls) in PENDING_METRICS.items() if "merchant" in ls])


def test_dashboard_histograms_have_quantiles() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    for metric, kind in KNOWN_METRICS.items():
        if kind != "histogram":
            continue
        for q in ("0.5", "0.95", "0.99"):
            assert any(
                e.startswith(f"histogram_quantile({q},") and f"{metric}_bucket" in e for e in exprs
            ), f"no p{q} panel for {metric}"


def test_metric_list_matches_worker_registry() -> None:
    from agents.runtime.metrics import REGISTRY

    exported = {}
    for family in REGISTRY.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        exported[name] = family.type
    pending = {name: exported.pop(name) for name in set(exported) & set(PENDING_METRICS)}
    assert exported == METRICS, "update the dashboard and METRICS for new/renamed metrics"
    labels = metric_labels()
    for name, kind in pending.items():  # issue 19's metrics, once merged: as the dashboard reads
        assert (kind, labels[name]) == PENDING_METRICS[name], name


# ---------------------------------------------------------------------------- CLI


def test_cli_offers_the_subcommands_compose_runs(services: dict) -> None:
    if not (REPO / "agents/tools/cli.py").is_file():
        pytest.skip("agents/tools/cli.py not written yet")
    result = subprocess.run(
        [sys.executable, "-c", "from agents.tools.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    for name in ("topics", "worker"):
        command = services[name]["command"][0]
        assert re.search(rf"\b{command}\b", result.stdout), f"`nextbest {command}` not in --help"
