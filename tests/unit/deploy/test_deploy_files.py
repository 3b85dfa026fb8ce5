"""deploy/: the compose file and Kubernetes manifests hold together, and pass the offline
linters (scripts/lint-deploy) when the `deploy-lint` extra is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_compose_has_replicas_behind_a_balancer_redis_and_a_gpu_worker() -> None:
    services = load(DEPLOY / "compose.yaml")["services"]
    assert services["lb"]["depends_on"]["proxy"]["condition"] == "service_healthy"
    proxy = services["proxy"]
    assert proxy["deploy"]["replicas"] >= 2
    assert "/readyz" in " ".join(proxy["healthcheck"]["test"])
    assert proxy["environment"]["LINGUAGATE_REDIS_URL"].endswith("redis://redis:6379/0}")
    worker = services["compressor-worker"]
    assert worker["profiles"] == ["gpu"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "proxy:8080" in (DEPLOY / "nginx.conf").read_text()


def test_kustomizations_name_existing_files() -> None:
    for folder in (DEPLOY / "k8s", DEPLOY / "k8s" / "gpu"):
        kustomization = load(folder / "kustomization.yaml")
        for resource in kustomization["resources"]:
            assert (folder / resource).exists(), resource
        for patch in kustomization.get("patches", []):
            assert (folder / patch["path"]).exists()


def test_proxy_deployment_probes_policies_and_secrets() -> None:
    deployment = load(DEPLOY / "k8s" / "proxy-deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"] == [{"secretRef": {"name": "linguagate"}}]
    [mount] = container["volumeMounts"]
    [volume] = deployment["spec"]["template"]["spec"]["volumes"]
    # A subPath mount would never see ConfigMap edits: hot reload needs the whole folder.
    assert "subPath" not in mount and volume["configMap"]["name"] == "linguagate-policies"
    hpa = load(DEPLOY / "k8s" / "proxy-hpa.yaml")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    worker = load(DEPLOY / "k8s" / "gpu" / "worker-deployment.yaml")
    [gpu] = worker["spec"]["template"]["spec"]["containers"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_policies_configmap_is_a_valid_policy_folder(tmp_path: Path) -> None:
    from proxy.policy.store import PolicyStore

    for name, text in load(DEPLOY / "k8s" / "policies-configmap.yaml")["data"].items():
        (tmp_path / name).write_text(text)
    store = PolicyStore(tmp_path)
    store.load()
    assert [t.name for t in store.current.tenants] == ["default"]


def test_offline_linters_pass() -> None:
    bin_dir = ROOT / ".venv" / "bin"
    tools = ("yamllint", "check-jsonschema", "kubernetes-validate")
    if not all((bin_dir / tool).exists() or shutil.which(tool) for tool in tools):
        pytest.skip("deploy linters not installed: .venv/bin/pip install -e '.[deploy-lint]'")
    result = subprocess.run([str(ROOT / "scripts" / "lint-deploy")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
