"""The deploy files, checked offline: Kubernetes schemas, checkov, yamllint, TensorFlow Serving's config
messages, the gateway's Settings, and ports, probes and names agreeing across files.

No cluster, container engine or TensorFlow Serving binary runs here; what these checks cannot show is
listed in deploy/README.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

ROOT = REPO
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TFSERVING = DEPLOY / "tfserving"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
NAMESPACE = "allxai"
#: The minimum Kubernetes (deploy/README.md; the newest feature the manifests use, the preStop sleep action,
#: is on by default from 1.30: tests/deploy/test_deploy_tools.py derives it) and the newest schemas
#: kubernetes-validate ships. Every manifest validates against exactly these.
MINIMUM_KUBERNETES = "1.30.0"
KUBERNETES_VERSIONS = (MINIMUM_KUBERNETES, "1.37.0")

#: Each setup is the union of these folders: `kubectl apply -f deploy/k8s/common -f deploy/k8s/<...>`.
SETUPS = {
    "gpu": ("common", "tfserving-common", "gpu"),
    "cpu": ("common", "tfserving-common", "cpu"),
    "embedded": ("common", "embedded"),
}
#: Created by the operator (deploy/README.md), never committed.
OPERATOR_SECRETS = {"allxai-gateway-tls", "allxai-client-ca", "allxai-gateway-tokens", "tfserving-rclone"}
TMP_MOUNT = "/tmp"
#: The namespace label that lets a namespace's client pods reach the gateway (set by the cluster admins).
CLIENT_NAMESPACE_LABEL = "allxai.io/lis-clients"
#: The gateway's health service that is SERVING for as long as the process runs (allxai.server.app).
LIVENESS_SERVICE = "allxai.liveness"


Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests(*folders: str) -> list[Manifest]:
    return [
        doc
        for folder in folders
        for path in sorted((K8S / folder).glob("*.yaml"))
        for doc in load_documents(path)
    ]


def setup(name: str) -> list[Manifest]:
    return manifests(*SETUPS[name])


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: Manifest, name: str) -> Manifest:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict."""
    out = {}
    for arg in args:
        assert arg.startswith("--") and "=" in arg, f"flag without a value: {arg}"
        key, value = arg[2:].split("=", 1)
        assert key not in out, f"flag given twice: {key}"
        out[key] = value
    return out


def gateway_env(setup_name: str) -> dict[str, str]:
    docs = setup(setup_name)
    deployment = find(docs, "Deployment", "allxai-gateway")
    env: dict[str, str] = {}
    for source in container(deployment, "gateway")["envFrom"]:
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container(deployment, "gateway").get("env", []):
        env[item["name"]] = item["value"]
    return env


def load_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The gateway's own Settings built from exactly ``env``; every name must be one of its fields."""
    from allxai.server.settings import Settings

    fields = set(Settings.model_fields)
    unknown = sorted(
        k for k in env if not k.startswith("ALLXAI_") or k[len("ALLXAI_") :].lower() not in fields
    )
    assert not unknown, f"not gateway settings: {unknown}"
    for key in list(os.environ):
        if key.startswith("ALLXAI_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


# --- Kubernetes schemas, checkov, yamllint ---------------------------------------------------------------


def all_manifest_files() -> list[Path]:
    return sorted(K8S.glob("*/*.yaml"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    from kubernetes_validate import utils

    checked = 0
    for path in all_manifest_files():
        for doc in load_documents(path):
            try:
                utils.validate(doc, version, strict=True)
            except utils.ValidationError as exc:
                location = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {location}: {exc}"
                )
            checked += 1
    assert checked >= 20


def test_schema_validation_is_strict() -> None:
    from kubernetes_validate import utils

    deployment = find(manifests("cpu"), "Deployment", "tfserving")
    container(deployment, "tfserving")["readinesProbe"] = {"grpc": {"port": 8500}}  # a typo
    with pytest.raises(utils.ValidationError):
        utils.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_yamllint_is_clean() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    paths = [*DEPLOY.rglob("*.yaml"), ROOT / ".yamllint"]
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.level}: {p.desc} ({p.rule})"
        for path in paths
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert len(paths) > 20
    assert not problems, "\n".join(problems)


def checkov_allow_list() -> dict[str, str]:
    """The skipped checks of deploy/.checkov.yaml, each with the comment on its line (its reason)."""
    text = (DEPLOY / ".checkov.yaml").read_text()
    skipped = yaml.safe_load(text)["skip-check"]
    reasons = {}
    for check in skipped:
        line = next(line for line in text.splitlines() if re.match(rf"\s*-\s*{check}\b", line))
        reasons[check] = line.partition("#")[2].strip()
    return reasons


def test_every_checkov_skip_has_a_reason() -> None:
    reasons = checkov_allow_list()
    assert reasons
    for check, reason in reasons.items():
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), check
        assert len(reason) > 20, f"{check} is skipped without a reason"


def test_checkov_finds_no_failed_check() -> None:
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV.relative_to(ROOT)} (make setup installs it)")
    started = time.monotonic()
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(DEPLOY / ".checkov.yaml"), "--output", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        # Offline: no guideline download, no telemetry.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.stdout, result.stderr[-3000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, sorted(by_type)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} in {c['file_path']}"
        for report in reports
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert by_type["kubernetes"]["summary"]["resource_count"] >= 25
    # Every Dockerfile was checked (gateway, gateway for TensorFlow Serving only, trainer).
    assert by_type["dockerfile"]["summary"]["resource_count"] == len(
        list((DEPLOY / "docker").glob("*Dockerfile"))
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 120


# --- TensorFlow Serving's config files -------------------------------------------------------------------


def test_models_config_parses_as_tensorflow_servings_model_server_config() -> None:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (TFSERVING / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    assert model.name == "allnet"
    assert model.base_path == "/models/allnet"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    versions = set(model.model_version_policy.specific.versions)
    assert versions
    assert set(model.version_labels) == {"stable", "canary"}
    # Labels name served versions (a label may point at one still loading, not at one never loaded).
    assert set(model.version_labels.values()) <= versions


def models_config() -> Any:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = (TFSERVING / "models.config").read_text()
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig()).model_config_list.config[0]


def test_a_wrong_field_in_models_config_is_refused() -> None:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with pytest.raises(text_format.ParseError, match="version_label"):
        text_format.Parse(
            'model_config_list { config { name: "allnet" version_label { key: "stable" value: 1 } } }',
            model_server_config_pb2.ModelServerConfig(),
        )


# TensorFlow Serving's pip package carries no message for its batching and monitoring files, so the
# documented fields are written down here and parsed against. Sources, in tensorflow/serving:
# - tensorflow_serving/servables/tensorflow/session_bundle_config.proto, message BatchingParameters
#   (the file --batching_parameters_file reads): wrappers for the scalars, a repeated int64 and a bool;
# - tensorflow_serving/config/monitoring_config.proto, MonitoringConfig and PrometheusConfig
#   (--monitoring_config_file).
# Later releases add more BatchingParameters fields (large-batch splitting, priorities); these files use
# none of them, and a field missing below fails the parse, which is the point: no typo goes unnoticed.
INT64 = ".google.protobuf.Int64Value"
BATCHING_PARAMETERS = [
    # (name, number, type, type_name, label)
    ("max_batch_size", 1, "TYPE_MESSAGE", INT64, "LABEL_OPTIONAL"),
    ("batch_timeout_micros", 2, "TYPE_MESSAGE", INT64, "LABEL_OPTIONAL"),
    ("max_enqueued_batches", 3, "TYPE_MESSAGE", INT64, "LABEL_OPTIONAL"),
    ("num_batch_threads", 4, "TYPE_MESSAGE", INT64, "LABEL_OPTIONAL"),
    ("thread_pool_name", 5, "TYPE_MESSAGE", ".google.protobuf.StringValue", "LABEL_OPTIONAL"),
    ("allowed_batch_sizes", 6, "TYPE_INT64", "", "LABEL_REPEATED"),
    ("pad_variable_length_inputs", 7, "TYPE_BOOL", "", "LABEL_OPTIONAL"),
]
PROMETHEUS_CONFIG = [
    ("enable", 1, "TYPE_BOOL", "", "LABEL_OPTIONAL"),
    ("path", 2, "TYPE_STRING", "", "LABEL_OPTIONAL"),
]
MONITORING_CONFIG = [
    ("prometheus_config", 1, "TYPE_MESSAGE", ".tensorflow.serving.PrometheusConfig", "LABEL_OPTIONAL"),
]


@pytest.fixture(scope="module")
def serving_messages() -> dict[str, Any]:
    """Message classes for BatchingParameters, MonitoringConfig and PrometheusConfig, built from the
    field lists above in a descriptor pool of their own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="allxai_tests/tensorflow_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers.name],
    )
    field_proto = descriptor_pb2.FieldDescriptorProto
    for name, fields in (
        ("BatchingParameters", BATCHING_PARAMETERS),
        ("PrometheusConfig", PROMETHEUS_CONFIG),
        ("MonitoringConfig", MONITORING_CONFIG),
    ):
        message = file.message_type.add(name=name)
        for field_name, number, type_, type_name, label in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                type=field_proto.Type.Value(type_),
                label=field_proto.Label.Value(label),
            )
            if type_name:
                field.type_name = type_name
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def parse_serving(serving_messages: dict[str, Any], message: str, text: str) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(text, serving_messages[message]())


def test_batching_parameters_fit_the_gateway_and_one_gpu(serving_messages: dict[str, Any]) -> None:
    batching = parse_serving(
        serving_messages, "BatchingParameters", (TFSERVING / "batching.config").read_text()
    )
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert batching.HasField(field), field
    sizes = list(batching.allowed_batch_sizes)
    assert sizes == sorted(set(sizes)) and sizes[0] >= 1
    # TensorFlow Serving's own rule: the last allowed size is max_batch_size.
    assert sizes[-1] == batching.max_batch_size.value
    env = gateway_env("gpu")
    # A gateway batch must never be larger than a TensorFlow Serving batch (it would be refused).
    assert int(env["ALLXAI_TFSERVING_BATCH_SIZE"]) == batching.max_batch_size.value
    assert 1 in sizes  # single-image Classify calls
    # The queue holds the worst case of every gateway pod's requests landing on one server.
    hpa = find(manifests("common"), "HorizontalPodAutoscaler", "allxai-gateway")
    worst = hpa["spec"]["maxReplicas"] * int(env["ALLXAI_TFSERVING_MAX_IN_FLIGHT"])
    assert batching.max_enqueued_batches.value >= worst
    assert 1 <= batching.num_batch_threads.value <= 4
    assert 0 < batching.batch_timeout_micros.value <= 10_000
    assert not batching.pad_variable_length_inputs


def test_unknown_or_mistyped_batching_fields_are_refused(serving_messages: dict[str, Any]) -> None:
    from google.protobuf import text_format

    with pytest.raises(text_format.ParseError, match="max_batch_sizes"):
        parse_serving(serving_messages, "BatchingParameters", "max_batch_sizes { value: 64 }")
    with pytest.raises(text_format.ParseError):
        parse_serving(serving_messages, "BatchingParameters", "max_batch_size: 64")  # not a wrapper
    with pytest.raises(text_format.ParseError, match="enabled"):
        parse_serving(serving_messages, "MonitoringConfig", "prometheus_config { enabled: true }")


def test_monitoring_config_exposes_prometheus_where_the_pods_say(serving_messages: dict[str, Any]) -> None:
    monitoring = parse_serving(
        serving_messages, "MonitoringConfig", (TFSERVING / "monitoring.config").read_text()
    )
    assert monitoring.prometheus_config.enable
    path = monitoring.prometheus_config.path
    assert path == "/monitoring/prometheus/metrics"
    for name in ("gpu", "cpu"):
        deployment = find(setup(name), "Deployment", "tfserving")
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        args = flags(container(deployment, "tfserving")["args"])
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == path
        assert annotations["prometheus.io/port"] == args["rest_api_port"]


def test_the_configmap_carries_the_config_files_verbatim() -> None:
    configmap = find(manifests("tfserving-common"), "ConfigMap", "tfserving-config")
    files = {p.name: p.read_text() for p in TFSERVING.glob("*.config")}
    assert configmap["data"] == files


def test_fetched_versions_are_the_served_versions() -> None:
    source = find(manifests("gpu"), "ConfigMap", "tfserving-model-source")["data"]
    assert {int(v) for v in source["versions"].split(",")} == set(
        models_config().model_version_policy.specific.versions
    )
    assert source["source"].endswith("/allnet")


# --- TensorFlow Serving's deployments ---------------------------------------------------------------------


def tfserving(name: str) -> tuple[Manifest, Manifest, dict[str, str]]:
    deployment = find(setup(name), "Deployment", "tfserving")
    server = container(deployment, "tfserving")
    return deployment, server, flags(server["args"])


def test_tfserving_flags() -> None:
    gpu_deployment, gpu, gpu_flags = tfserving("gpu")
    _, cpu, cpu_flags = tfserving("cpu")
    assert gpu["image"] == "tensorflow/serving:2.21.0-gpu"
    assert cpu["image"] == "tensorflow/serving:2.21.0"
    assert gpu["command"] == cpu["command"] == ["/usr/bin/tensorflow_model_server"]
    gpu_only = {"per_process_gpu_memory_fraction"}
    assert set(gpu_flags) - set(cpu_flags) == gpu_only
    assert {k: v for k, v in gpu_flags.items() if k not in gpu_only} == cpu_flags
    assert gpu_flags["model_config_file"] == "/etc/tfserving/models.config"
    assert gpu_flags["monitoring_config_file"] == "/etc/tfserving/monitoring.config"
    assert gpu_flags["allow_version_labels_for_unavailable_models"] == "true"
    assert gpu_flags["enable_model_warmup"] == "true"
    # Off on purpose: session batching breaks the compose and model_card signatures (batching.config).
    assert gpu_flags["enable_batching"] == "false" and "batching_parameters_file" not in gpu_flags
    assert 0 < float(gpu_flags["per_process_gpu_memory_fraction"]) < 1
    env = {e["name"]: e["value"] for e in gpu["env"]}
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in {e["name"] for e in cpu["env"]}
    # Thread pools no larger than the CPU the container may use.
    cpu_limit = int(gpu["resources"]["limits"]["cpu"])
    for key in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
        assert int(gpu_flags[key]) <= cpu_limit
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    pod = gpu_deployment["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_tfserving_ports_probes_and_mounts_agree() -> None:
    service = find(manifests("tfserving-common"), "Service", "tfserving-headless")
    assert service["spec"]["clusterIP"] == "None"
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    model = models_config()
    for name in ("gpu", "cpu"):
        deployment, server, args = tfserving(name)
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        assert ports == {"grpc": int(args["port"]), "http": int(args["rest_api_port"])}
        for port_name, number in ports.items():
            assert service_ports[port_name]["port"] == number
            assert service_ports[port_name]["targetPort"] == port_name
        # Ready only when a version is AVAILABLE: the metadata endpoint of the served model.
        for probe in ("readinessProbe", "startupProbe"):
            get = server[probe]["httpGet"]
            assert get == {"path": f"/v1/models/{model.name}/metadata", "port": "http"}
        assert server["livenessProbe"]["httpGet"]["path"] == f"/v1/models/{model.name}"
        mounts = {m["name"]: m for m in server["volumeMounts"]}
        assert model.base_path.startswith(mounts["models"]["mountPath"] + "/")
        assert mounts["models"]["readOnly"] is True
        assert str(Path(args["model_config_file"]).parent) == mounts["config"]["mountPath"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "tfserving-config"
        selector = service["spec"]["selector"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # GPU: models fetched into an emptyDir by the init container; CPU: a PVC.
    gpu_deployment, _, _ = tfserving("gpu")
    fetch = container(gpu_deployment, "fetch-models")
    assert re.fullmatch(r"rclone/rclone:\d+\.\d+\.\d+", fetch["image"])
    assert fetch["args"][-1] == model.base_path
    gpu_volumes = {v["name"]: v for v in gpu_deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in gpu_volumes["models"]
    cpu_volumes = {v["name"]: v for v in tfserving("cpu")[0]["spec"]["template"]["spec"]["volumes"]}
    assert cpu_volumes["models"]["persistentVolumeClaim"]["claimName"] == "allxai-models"


# --- The gateway ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setup_name", sorted(SETUPS))
def test_gateway_environment_is_real_settings(setup_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(gateway_env(setup_name), monkeypatch)
    docs = setup(setup_name)
    deployment = find(docs, "Deployment", "allxai-gateway")
    gateway = container(deployment, "gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"grpc": settings.port, "health": settings.health_port, "metrics": settings.metrics_port}
    assert settings.health_port not in (0, settings.port)
    # Kubelet grpc probes on the plaintext health port; the main port serves TLS.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["grpc"]["port"] == settings.health_port, probe
    assert settings.tls_cert_file and settings.tls_key_file and settings.tls_client_ca_file
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for path in (
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
        settings.auth_tokens_file,
    ):
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert path.name in {item["path"] for item in secret["items"]}, path
    assert settings.auth_tokens is None  # tokens come from the mounted file, never an env value
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = find(docs, "Service", "allxai-gateway")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": settings.port,
        "metrics": settings.metrics_port,
    }
    # SIGTERM comes after the preStop pause; draining must end before the kubelet's SIGKILL.
    pod = deployment["spec"]["template"]["spec"]
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pause + settings.grace_period_seconds + 5
    if setup_name == "embedded":
        assert settings.backend == "embedded"
        assert mounts[str(settings.model_base_path)]["readOnly"] is True
        model = models_config()
        assert settings.version_labels == {model.name: dict(model.version_labels)}
    else:
        assert settings.backend == "tfserving"
        assert settings.tfserving_models == [models_config().name]
        service = find(docs, "Service", "tfserving-headless")
        grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
        host = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        assert settings.tfserving_target == f"dns:///{host}:{grpc_port}"


def probe_window(probe: Manifest) -> int:
    """Seconds a probe may keep failing before the kubelet acts (initial delay plus the failures)."""
    return probe.get("initialDelaySeconds", 0) + probe["failureThreshold"] * probe.get("periodSeconds", 10)


@pytest.mark.parametrize("setup_name", sorted(SETUPS))
def test_gateway_liveness_ignores_the_backend_and_readiness_follows_it(setup_name: str) -> None:
    from allxai.server import app

    gateway = container(find(setup(setup_name), "Deployment", "allxai-gateway"), "gateway")
    # allxai.liveness is SERVING while the process runs; "" is NOT_SERVING while TensorFlow Serving is
    # unavailable, and a liveness probe on it would restart every gateway pod during such an outage.
    assert app.LIVENESS_SERVICE == LIVENESS_SERVICE
    assert gateway["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    for probe in ("readinessProbe", "startupProbe"):
        assert gateway[probe]["grpc"].get("service", "") == "", probe


@pytest.mark.parametrize("setup_name", ["gpu", "cpu"])
def test_the_gateway_waits_at_least_as_long_as_tensorflow_serving_starts(setup_name: str) -> None:
    # The gateway reports SERVING only once TensorFlow Serving answers: its startup window must cover
    # TensorFlow Serving's (slow GPU model loads), or the kubelet restarts gateways that were fine.
    docs = setup(setup_name)
    gateway = container(find(docs, "Deployment", "allxai-gateway"), "gateway")
    server = container(find(docs, "Deployment", "tfserving"), "tfserving")
    assert probe_window(gateway["startupProbe"]) >= probe_window(server["startupProbe"])


def test_the_two_gateway_deployments_differ_only_in_the_backend() -> None:
    tfs = find(manifests("tfserving-common"), "Deployment", "allxai-gateway")
    embedded = find(manifests("embedded"), "Deployment", "allxai-gateway")
    for deployment in (tfs, embedded):
        pod = deployment["spec"]["template"]["spec"]
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "models"]
        gateway = container(deployment, "gateway")
        gateway["volumeMounts"] = [m for m in gateway["volumeMounts"] if m["name"] != "models"]
        gateway.pop("resources")
    assert tfs == embedded


def test_the_hpa_and_the_pdbs_select_what_exists() -> None:
    for setup_name in SETUPS:
        docs = setup(setup_name)
        deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
        for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]
            assert target["kind"] == "Deployment" and target["name"] in deployments
            assert "replicas" not in deployments[target["name"]]["spec"]  # the HPA owns the count
            assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Resource":
                    # Utilisation is relative to requests: every container must request CPU.
                    pod = deployments[target["name"]]["spec"]["template"]["spec"]
                    assert all("cpu" in c["resources"]["requests"] for c in pod["containers"])
        for kind in ("PodDisruptionBudget", "Service", "NetworkPolicy"):
            for doc in (d for d in docs if d["kind"] == kind):
                selector = doc["spec"].get("selector") or doc["spec"].get("podSelector")
                labels = selector.get("matchLabels", selector) if kind != "Service" else selector
                if not labels:
                    continue  # default deny: every pod
                matched = [
                    d
                    for d in deployments.values()
                    if labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                ]
                assert matched, f"{setup_name}: {kind}/{doc['metadata']['name']} selects no pod"


def test_the_optional_custom_metric_hpa_replaces_the_cpu_one() -> None:
    cpu_only = find(manifests("common"), "HorizontalPodAutoscaler", "allxai-gateway")
    custom = find(manifests("optional"), "HorizontalPodAutoscaler", "allxai-gateway")
    assert custom["spec"]["scaleTargetRef"] == cpu_only["spec"]["scaleTargetRef"]
    assert cpu_only["spec"]["metrics"][0] in custom["spec"]["metrics"]
    names = {m["pods"]["metric"]["name"] for m in custom["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {"allxai_queued_explanations"}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-adapter-values.yaml").read_text())
    assert names <= {rule["name"]["as"] for rule in rules["rules"]["custom"]}


#: The merge key of each list the audit patch touches (Kubernetes' patchMergeKey for these fields).
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """``kubectl patch``'s default merge for what the optional patches use: maps merged key by key, the
    lists of MERGE_KEYS merged element by element on their key."""
    if isinstance(patch, dict):
        merged = dict(target or {})
        for key, value in patch.items():
            merged[key] = strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = list(target or [])
        for item in patch:
            index = next((i for i, t in enumerate(merged_list) if t[key] == item[key]), None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return patch


@pytest.mark.parametrize("setup_name", ["gpu", "embedded"])
def test_the_optional_audit_volume_patches_into_the_gateway(
    setup_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes_validate import utils

    docs = setup(setup_name)
    patch = yaml.safe_load((K8S / "optional" / "patches" / "gateway-audit.yaml").read_text())
    deployment = strategic_merge(find(docs, "Deployment", "allxai-gateway"), patch)
    for version in KUBERNETES_VERSIONS:
        utils.validate(deployment, version, strict=True)
    gateway = container(deployment, "gateway")
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["gateway"]
    env = {e["name"]: e for e in gateway["env"]}
    # Each replica its own file: the pod name, through the downward API, defined before its use.
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    names = [e["name"] for e in gateway["env"]]
    assert names.index("POD_NAME") < names.index("ALLXAI_AUDIT_PATH")
    assert "$(POD_NAME)" in env["ALLXAI_AUDIT_PATH"]["value"]
    settings_env = {**gateway_env(setup_name)}
    settings_env.update({k: e["value"] for k, e in env.items() if k.startswith("ALLXAI_")})
    settings = load_settings(settings_env, monkeypatch)
    assert settings.audit_path is not None
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    mount = mounts[str(settings.audit_path.parent)]
    assert not mount.get("readOnly", False)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = find(manifests("optional"), "PersistentVolumeClaim", claim)
    # Several gateway pods, spread over nodes, each appending to its own file on the one volume.
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["namespace"] == NAMESPACE
    # The pod's fsGroup makes the volume writable for the image's user.
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001


def test_network_policies_fence_tensorflow_serving_and_the_gateway() -> None:
    docs = manifests("common", "tfserving-common")
    deny = find(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    tfs = find(docs, "NetworkPolicy", "tfserving-ingress")
    grpc_rule, metrics_rule = tfs["spec"]["ingress"]
    assert grpc_rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "allxai-gateway"}}}
    ]
    assert [p["port"] for p in grpc_rule["ports"]] == [8500]
    assert [p["port"] for p in metrics_rule["ports"]] == [8501]
    gateway = find(docs, "NetworkPolicy", "allxai-gateway-ingress")
    clients, prometheus = gateway["spec"]["ingress"]
    # Clients are named twice: their namespace (labelled by the cluster admins) and their pods.
    assert clients["from"] == [
        {
            "namespaceSelector": {"matchLabels": {CLIENT_NAMESPACE_LABEL: "true"}},
            "podSelector": {"matchLabels": {"allxai.io/client": "true"}},
        }
    ]
    assert [p["port"] for p in clients["ports"]] == [50051]
    assert [p["port"] for p in prometheus["ports"]] == [9090]
    # The health port is for the kubelet only (node traffic is never blocked by NetworkPolicy).
    assert all(p["port"] != 8081 for rule in gateway["spec"]["ingress"] for p in rule["ports"])


def peers(policy: Manifest, direction: str) -> list[Manifest]:
    key = "from" if direction == "ingress" else "to"
    return [peer for rule in policy["spec"].get(direction, []) for peer in rule.get(key, [])]


def egress_rules(docs: list[Manifest]) -> dict[str, list[tuple[Any, list[tuple[int, str]]]]]:
    """Per NetworkPolicy with egress rules: each rule's peers and (port, protocol) pairs."""
    return {
        d["metadata"]["name"]: [
            (rule.get("to"), [(p["port"], p["protocol"]) for p in rule["ports"]])
            for rule in d["spec"]["egress"]
        ]
        for d in docs
        if d["kind"] == "NetworkPolicy" and "egress" in d["spec"]
    }


@pytest.mark.parametrize("setup_name", sorted(SETUPS))
def test_egress_is_denied_but_dns_tensorflow_serving_and_the_object_store(setup_name: str) -> None:
    docs = setup(setup_name)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = find(docs, "NetworkPolicy", "default-deny-egress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Egress"]}
    for policy in policies:
        # No peer may be "every namespace": an empty namespaceSelector lets any pod of the cluster through.
        for peer in peers(policy, "ingress") + peers(policy, "egress"):
            assert peer.get("namespaceSelector") != {}, policy["metadata"]["name"]
        # A policy that lists egress rules must say it governs egress (or they would be ignored).
        if "egress" in policy["spec"]:
            assert "Egress" in policy["spec"]["policyTypes"], policy["metadata"]["name"]
    dns = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    expected = {"allow-dns-egress": [(dns, [(53, "UDP"), (53, "TCP")])]}
    if setup_name != "embedded":
        tfserving_pods = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tfserving"}}}]
        expected["allxai-gateway-egress"] = [(tfserving_pods, [(8500, "TCP")])]
    rules = egress_rules(docs)
    if setup_name == "gpu":
        # The init container's model copy: HTTPS to addresses outside the cluster only.
        ((to, ports),) = rules.pop("tfserving-egress-object-store")
        assert ports == [(443, "TCP")]
        blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in to}
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= blocks["0.0.0.0/0"]
        assert {"fc00::/7", "fe80::/10"} <= blocks["::/0"]
        policy = find(docs, "NetworkPolicy", "tfserving-egress-object-store")
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "tfserving"}
        assert container(find(docs, "Deployment", "tfserving"), "fetch-models")
    assert rules == expected
    selectors = {
        d["metadata"]["name"]: d["spec"]["podSelector"] for d in policies if d["metadata"]["name"] in rules
    }
    assert selectors["allow-dns-egress"] == {}
    if setup_name != "embedded":
        assert selectors["allxai-gateway-egress"] == {
            "matchLabels": {"app.kubernetes.io/name": "allxai-gateway"}
        }


# --- Every setup: complete, namespaced, restricted ------------------------------------------------------


def pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("setup_name", sorted(SETUPS))
def test_each_setup_is_complete_and_namespaced(setup_name: str) -> None:
    docs = setup(setup_name)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "a name used twice in one setup"
    assert ("Namespace", NAMESPACE) in keys
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    present = set(keys)
    for name, pod in pod_specs(docs):
        assert ("ServiceAccount", pod["serviceAccountName"]) in present, name
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in present
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in present
            if "secret" in volume:
                assert volume["secret"]["secretName"] in OPERATOR_SECRETS
        for c in pod["containers"] + pod.get("initContainers", []):
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in present
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in find(docs, "ConfigMap", ref["name"])["data"]


@pytest.mark.parametrize("setup_name", sorted(SETUPS))
def test_every_pod_runs_restricted(setup_name: str) -> None:
    for name, pod in pod_specs(setup(setup_name)):
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"] + pod.get("initContainers", []):
            context = c["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000, c["name"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == TMP_MOUNT)
            assert "emptyDir" in volumes[tmp["name"]]
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", c["image"]) and not c["image"].endswith(":latest")
        spread = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
        assert spread == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespace = find(manifests("common"), "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- Containers and compose ---------------------------------------------------------------------------


def dockerfile(name: str) -> list[list[str]]:
    """Instructions as [KEYWORD, rest], continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "docker" / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [line.split(None, 1) for line in lines]


def test_the_gateway_image_is_slim_multi_stage_and_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    instructions = dockerfile("gateway.Dockerfile")
    bases = [rest for keyword, rest in instructions if keyword == "FROM"]
    # Both stages on the same base, pinned to a Python patch release and a Debian release.
    base = bases[0].removesuffix(" AS build")
    assert bases == [f"{base} AS build", base]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    assert any(k == "RUN" and 'pip install ".[server]"' in rest for k, rest in instructions)
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    uid = int(user.split(":")[0])
    assert uid >= 10000
    # The Kubernetes pods run as the image's user.
    for _, pod in pod_specs(setup("cpu")):
        assert pod["securityContext"]["runAsUser"] == uid
    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "allxai.server"]
    (expose,) = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    settings = load_settings(gateway_env("gpu"), monkeypatch)
    assert {int(p) for p in expose.split()} == {settings.port, settings.health_port, settings.metrics_port}
    # The runtime stage gets only the virtualenv from the build stage.
    runtime = instructions[[k for k, _ in instructions].index("FROM", 1) :]
    assert [rest for keyword, rest in runtime if keyword == "COPY"] == [
        "--from=build /opt/allxai /opt/allxai"
    ]


def test_the_trainer_image_builds_on_tensorflows_gpu_image() -> None:
    instructions = dockerfile("trainer.Dockerfile")
    assert [rest for keyword, rest in instructions if keyword == "FROM"] == [
        "tensorflow/tensorflow:2.21.0-gpu"
    ]
    assert any(k == "RUN" and 'pip install ".[train]"' in rest for k, rest in instructions)
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    assert int(user.split(":")[0]) >= 10000


def test_the_build_context_leaves_out_environments_and_data() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", "results", "models", "tests"} <= ignored
    for instructions in (dockerfile("gateway.Dockerfile"), dockerfile("trainer.Dockerfile")):
        for keyword, rest in instructions:
            if keyword == "COPY" and not rest.startswith("--from"):
                for source in rest.split()[:-1]:
                    assert (ROOT / source).exists() and source not in ignored, source


def test_compose_runs_the_official_image_and_the_gateway_against_it(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    gpu_override = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    tfs, gateway = compose["services"]["tfserving"], compose["services"]["gateway"]
    assert tfs["image"] == "tensorflow/serving:2.21.0"
    assert gpu_override["services"]["tfserving"]["image"] == "tensorflow/serving:2.21.0-gpu"
    args = flags(tfs["command"])
    gpu_args = flags(gpu_override["services"]["tfserving"]["command"])
    _, _, k8s_cpu = tfserving("cpu")
    _, _, k8s_gpu = tfserving("gpu")
    # The same server flags as on Kubernetes, less the thread pools sized to a pod's CPU limit.
    pod_sized = {"tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"}
    assert args == {k: v for k, v in k8s_cpu.items() if k not in pod_sized}
    assert gpu_args == {k: v for k, v in k8s_gpu.items() if k not in pod_sized}
    mounts = {m.split(":")[1]: m.split(":")[0] for m in tfs["volumes"]}
    assert (DEPLOY / mounts["/etc/tfserving"]).resolve() == TFSERVING
    assert models_config().base_path.startswith("/models/")
    # `make demo` exports into results/models/<name>/<version>/.
    assert (DEPLOY / mounts["/models"]).resolve() == ROOT / "results" / "models"
    settings = load_settings(gateway["environment"], monkeypatch)
    assert settings.backend == "tfserving"
    assert settings.tfserving_target == f"tfserving:{args['port']}"
    assert settings.tfserving_batch_size == int(gateway_env("gpu")["ALLXAI_TFSERVING_BATCH_SIZE"])
    published = {int(p.rsplit(":", 1)[1]) for p in gateway["ports"]}
    assert published == {settings.port, settings.metrics_port}
    assert f"127.0.0.1:{settings.health_port}" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["build"]["dockerfile"] == "deploy/docker/gateway.Dockerfile"
    assert (DEPLOY / gateway["build"]["context"]).resolve() == ROOT


def test_checkov_is_where_the_test_looks_or_the_skip_says_so() -> None:
    # Keeps the skip above honest: the path the Makefile installs to is the path the test runs.
    assert CHECKOV.relative_to(ROOT) == Path(".tools/checkov/bin/checkov")
    if CHECKOV.exists():
        assert shutil.which(str(CHECKOV))
