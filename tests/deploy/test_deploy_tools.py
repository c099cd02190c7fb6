"""The operator's tools and the first deployment's prerequisites: the minimum Kubernetes version, the
generated TensorFlow Serving ConfigMap, canary promotion, model upload, the GPU node's needs, the HPA's
metrics-server, and the CPU setup without ReadWriteMany storage.

All offline: the scripts run on copies of the deploy files in tmp_path, uploads go to local folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.test_deploy import (
    K8S,
    KUBERNETES_VERSIONS,
    MINIMUM_KUBERNETES,
    container,
    find,
    flags,
    load_documents,
    manifests,
    strategic_merge,
)

DEPLOY = REPO / "deploy"
SCRIPTS = REPO / "scripts"
README = DEPLOY / "README.md"
Manifest = dict[str, Any]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def all_documents() -> list[Manifest]:
    return [doc for path in sorted(K8S.glob("*/*.yaml")) for doc in load_documents(path)]


def pod_containers(doc: Manifest) -> Iterator[Manifest]:
    if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        spec = doc["spec"]["template"]["spec"]
        yield from spec.get("initContainers", []) + spec["containers"]


# --- the minimum Kubernetes version --------------------------------------------------------------------


def uses_prestop_sleep(docs: list[Manifest]) -> bool:
    return any("sleep" in c.get("lifecycle", {}).get("preStop", {}) for d in docs for c in pod_containers(d))


def uses_grpc_probes(docs: list[Manifest]) -> bool:
    probes = ("livenessProbe", "readinessProbe", "startupProbe")
    return any("grpc" in c.get(p, {}) for d in docs for c in pod_containers(d) for p in probes)


def uses_api(api: str, kind: str) -> Callable[[list[Manifest]], bool]:
    return lambda docs: any(d["apiVersion"] == api and d["kind"] == kind for d in docs)


def uses_pod_security_labels(docs: list[Manifest]) -> bool:
    return any(
        k.startswith("pod-security.kubernetes.io/")
        for d in docs
        if d["kind"] == "Namespace"
        for k in d["metadata"].get("labels", {})
    )


def uses_emptydir_size_limit(docs: list[Manifest]) -> bool:
    return any(
        "sizeLimit" in v.get("emptyDir", {})
        for d in docs
        if d["kind"] == "Deployment"
        for v in d["spec"]["template"]["spec"].get("volumes", [])
    )


#: Each version-dependent feature the manifests use, the first Kubernetes release that has it on by default
#: (beta on by default or GA), and how to see it in the manifests. The minimum is the latest of these.
FEATURES: dict[str, tuple[tuple[int, int], Callable[[list[Manifest]], bool]]] = {
    # PodLifecycleSleepAction: alpha (off) in 1.29, beta and on by default in 1.30.
    "lifecycle.preStop.sleep": ((1, 30), uses_prestop_sleep),
    # GRPCContainerProbe: beta and on by default in 1.24, GA in 1.27.
    "grpc probes": ((1, 24), uses_grpc_probes),
    # Pod Security admission: beta and on by default in 1.23, GA in 1.25.
    "pod-security.kubernetes.io labels": ((1, 23), uses_pod_security_labels),
    # LocalStorageCapacityIsolation (emptyDir sizeLimit, ephemeral-storage): GA in 1.25.
    "emptyDir.sizeLimit": ((1, 25), uses_emptydir_size_limit),
    "autoscaling/v2 HorizontalPodAutoscaler": (
        (1, 23),
        uses_api("autoscaling/v2", "HorizontalPodAutoscaler"),
    ),
    "policy/v1 PodDisruptionBudget": ((1, 21), uses_api("policy/v1", "PodDisruptionBudget")),
}


def test_the_minimum_kubernetes_is_the_newest_feature_the_manifests_use() -> None:
    docs = all_documents()
    used = {name: since for name, (since, present) in FEATURES.items() if present(docs)}
    assert set(used) == set(FEATURES), f"features no longer used: {set(FEATURES) - set(used)}"
    newest = max(used.values())
    assert f"{newest[0]}.{newest[1]}.0" == MINIMUM_KUBERNETES
    assert KUBERNETES_VERSIONS[0] == MINIMUM_KUBERNETES
    assert f"Kubernetes {newest[0]}.{newest[1]}" in README.read_text()


def test_the_release_before_the_minimum_refuses_the_manifests() -> None:
    # 1.28's schemas have no preStop sleep: the gateway Deployments fail there, on exactly that field.
    # (1.29's schema has the field, but the feature is alpha and off by default, so 1.30 is the minimum.)
    from kubernetes_validate import utils

    failures = {}
    for path in sorted(K8S.glob("*/*.yaml")):
        for doc in load_documents(path):
            try:
                utils.validate(doc, "1.28.0", strict=True)
            except utils.ValidationError as exc:
                failures[f"{path.parent.name}/{path.name}"] = ".".join(str(p) for p in exc.path)
    assert failures == {
        "embedded/gateway-deployment.yaml": "spec.template.spec.containers.0.lifecycle.preStop",
        "tfserving-common/gateway-deployment.yaml": "spec.template.spec.containers.0.lifecycle.preStop",
    }
    for doc in all_documents():
        utils.validate(doc, MINIMUM_KUBERNETES, strict=True)


# --- the TensorFlow Serving ConfigMap ------------------------------------------------------------------


def test_the_committed_configmap_is_the_generated_one() -> None:
    result = run_script("tfserving_configmap.py", "--check")
    assert result.returncode == 0, result.stderr + " (run make deploy-config)"


def test_the_configmap_check_catches_a_stale_copy(tmp_path: Path) -> None:
    config_dir = tmp_path / "tfserving"
    shutil.copytree(DEPLOY / "tfserving", config_dir)
    out = tmp_path / "tfserving-config.yaml"
    assert (
        run_script("tfserving_configmap.py", "--config-dir", str(config_dir), "--out", str(out)).returncode
        == 0
    )
    data = yaml.safe_load(out.read_text())["data"]
    assert data == {p.name: p.read_text() for p in config_dir.glob("*.config")}
    (config_dir / "models.config").write_text((config_dir / "models.config").read_text() + "# edited\n")
    stale = run_script(
        "tfserving_configmap.py", "--config-dir", str(config_dir), "--out", str(out), "--check"
    )
    assert stale.returncode == 1 and "stale" in stale.stderr


def test_make_deploy_config_runs_the_generator() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "deploy-config: $(STAMP)\n\t$(BIN)/python scripts/tfserving_configmap.py\n" in makefile


# --- canary promotion ------------------------------------------------------------------------------------


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    return copy


def served(deploy: Path) -> tuple[list[int], dict[str, int], str, dict[str, str]]:
    """The versions and labels models.config serves (parsed by TensorFlow Serving's own message), the GPU
    fetch list, and the ConfigMap's data."""
    from google.protobuf import text_format

    from allxai.tfs_protos.tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((deploy / "tfserving" / "models.config").read_text(), config)
    (model,) = config.model_config_list.config
    source = yaml.safe_load((deploy / "k8s" / "gpu" / "model-source.yaml").read_text())["data"]["versions"]
    configmap = yaml.safe_load((deploy / "k8s" / "tfserving-common" / "tfserving-config.yaml").read_text())
    return (
        list(model.model_version_policy.specific.versions),
        dict(model.version_labels),
        source,
        configmap["data"],
    )


def promote(deploy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_script("promote_canary.py", *args, "--deploy-dir", str(deploy))


def test_a_canary_starts_is_promoted_and_the_old_version_retires(deploy_copy: Path) -> None:
    assert served(deploy_copy)[:3] == ([1], {"stable": 1, "canary": 1}, "1")
    steps = [
        (("start", "2"), [1, 2], {"stable": 1, "canary": 2}, "1,2"),
        (("promote",), [1, 2], {"stable": 2, "canary": 2}, "1,2"),
        (("retire",), [2], {"stable": 2, "canary": 2}, "2"),
        (("start", "3"), [2, 3], {"stable": 2, "canary": 3}, "2,3"),
        (("rollback",), [2, 3], {"stable": 2, "canary": 2}, "2,3"),
        (("retire",), [2], {"stable": 2, "canary": 2}, "2"),
    ]
    for args, versions, labels, fetched in steps:
        result = promote(deploy_copy, *args)
        assert result.returncode == 0, result.stderr
        got_versions, got_labels, got_fetched, configmap = served(deploy_copy)
        assert (got_versions, got_labels, got_fetched) == (versions, labels, fetched), args
        # The ConfigMap is regenerated with every edit: what the pods mount is what was edited.
        assert configmap == {p.name: p.read_text() for p in (deploy_copy / "tfserving").glob("*.config")}
    # Only the versions and labels changed; every comment of the file is still there.
    before = (DEPLOY / "tfserving" / "models.config").read_text().splitlines()
    after = (deploy_copy / "tfserving" / "models.config").read_text().splitlines()
    assert [line for line in before if "#" in line] == [line for line in after if "#" in line]
    assert len(before) == len(after)


def test_promotion_refuses_what_would_lose_a_canary(deploy_copy: Path) -> None:
    assert promote(deploy_copy, "promote").returncode == 1  # nothing on trial
    assert promote(deploy_copy, "start", "1").returncode == 1  # already the stable one
    assert promote(deploy_copy, "start", "2").returncode == 0
    refused = promote(deploy_copy, "start", "3")  # a second canary would silently replace the first
    assert refused.returncode == 1 and "in flight" in refused.stderr
    assert served(deploy_copy)[1] == {"stable": 1, "canary": 2}


def test_tensorflow_serving_rereads_the_model_config_on_its_own() -> None:
    for setup in ("gpu", "cpu"):
        deployment = find(manifests(setup), "Deployment", "tfserving")
        args = flags(container(deployment, "tfserving")["args"])
        assert int(args["model_config_file_poll_wait_seconds"]) > 0
        assert args["allow_version_labels_for_unavailable_models"] == "true"


# --- model upload ----------------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A SavedModel version's layout (the files, not a real model: the upload copies bytes)."""
    version = tmp_path / "export" / "2"
    (version / "variables").mkdir(parents=True)
    (version / "assets.extra").mkdir()
    (version / "saved_model.pb").write_bytes(b"graph" * 100)
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(4096))
    (version / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"warmup")
    return version


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_upload_lands_in_tensorflow_servings_layout(exported: Path, tmp_path: Path) -> None:
    base = tmp_path / "volume"
    result = run_script("upload_model.py", str(exported), str(base), "--model", "allnet")
    assert result.returncode == 0, result.stderr
    assert tree(base / "allnet" / "2") == tree(exported)
    # Nothing else is left next to the version (the staging folder is gone).
    assert sorted(p.name for p in (base / "allnet").iterdir()) == ["2"]


def test_an_existing_version_is_never_overwritten(exported: Path, tmp_path: Path) -> None:
    base = tmp_path / "volume"
    (base / "allnet" / "2").mkdir(parents=True)
    (base / "allnet" / "2" / "saved_model.pb").write_bytes(b"the version being served")
    result = run_script("upload_model.py", str(exported), str(base), "--version", "2")
    assert result.returncode == 1 and "exists" in result.stderr
    assert (base / "allnet" / "2" / "saved_model.pb").read_bytes() == b"the version being served"
    assert sorted(p.name for p in (base / "allnet").iterdir()) == ["2"]


def test_an_upload_is_all_or_nothing(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import upload_model
    finally:
        sys.path.remove(str(SCRIPTS))
    base = tmp_path / "volume"
    copied: list[str] = []
    real_copytree = shutil.copytree

    def fail_midway(src: str, dst: str) -> Any:
        if len(copied) == 2:
            raise OSError("disk full")
        copied.append(src)
        return shutil.copy2(src, dst)

    # The copy fails after two files, as a full disk or a lost mount would.
    # (copytree calls itself for sub-folders with more arguments; every level gets the failing copy.)
    monkeypatch.setattr(
        shutil, "copytree", lambda src, dst, *_, **__: real_copytree(src, dst, copy_function=fail_midway)
    )
    with pytest.raises(Exception, match="disk full"):
        upload_model.upload_local(exported, base, "allnet", 2)
    # The reader sees no version at all, and no half-copied folder is left behind.
    assert copied and list((base / "allnet").iterdir()) == []


def test_an_upload_refuses_what_is_no_savedmodel(tmp_path: Path) -> None:
    (tmp_path / "3").mkdir()
    result = run_script("upload_model.py", str(tmp_path / "3"), str(tmp_path / "volume"))
    assert result.returncode == 1 and "saved_model.pb" in result.stderr
    assert not (tmp_path / "volume").exists()


# --- GPU nodes, metrics-server, the CPU setup without ReadWriteMany ---------------------------------------


def test_gpu_pods_need_only_the_device_plugins_resource() -> None:
    deployment = find(manifests("gpu"), "Deployment", "tfserving")
    pod = deployment["spec"]["template"]["spec"]
    # nvidia.com/gpu is what schedules the pod onto a GPU node (the NVIDIA device plugin advertises it);
    # no label that only GPU Feature Discovery sets is required.
    assert "nodeSelector" not in pod and "affinity" not in pod
    tfserving = container(deployment, "tfserving")
    assert tfserving["resources"]["limits"]["nvidia.com/gpu"] == 1
    text = README.read_text()
    for needed in (
        "NVIDIA driver",
        "device plugin",
        "nvidia.com/gpu",
        "GPU Operator",
        "nvidia.com/gpu.present",
    ):
        assert needed in text, needed


def test_the_hpa_says_it_needs_metrics_server() -> None:
    hpa_text = (K8S / "common" / "gateway-hpa.yaml").read_text()
    assert "metrics-server" in hpa_text
    assert "metrics-server" in README.read_text()


def test_the_cpu_setup_can_read_the_model_from_a_bucket_without_readwritemany() -> None:
    from kubernetes_validate import utils

    patch = yaml.safe_load((K8S / "optional" / "patches" / "tfserving-cpu-from-bucket.yaml").read_text())
    cpu = find(manifests("cpu"), "Deployment", "tfserving")
    patched = drop_nulls(strategic_merge(cpu, patch))
    for version in KUBERNETES_VERSIONS:
        utils.validate(patched, version, strict=True)
    spec = patched["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    # Each pod's own emptyDir, no claim at all: nothing needs ReadWriteMany storage.
    assert set(volumes["models"]) == {"name", "emptyDir"}
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    # Exactly the GPU setup's init container, fed by the same ConfigMap and let out by the same policy.
    gpu = find(manifests("gpu"), "Deployment", "tfserving")
    assert spec["initContainers"] == gpu["spec"]["template"]["spec"]["initContainers"]
    assert (
        volumes["rclone-config"]
        == {v["name"]: v for v in gpu["spec"]["template"]["spec"]["volumes"]}["rclone-config"]
    )
    mounts = {m["mountPath"]: m["name"] for m in container(patched, "fetch-models")["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes)
    assert container(patched, "tfserving") == container(cpu, "tfserving")


def drop_nulls(value: Any) -> Any:
    """A strategic merge's ``null``: the field is deleted."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value
