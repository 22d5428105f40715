"""The Kubernetes manifests in deploy/kubernetes: parsed, and the fields that matter checked.

No cluster runs here; these tests hold the manifests to what the app and the
command really offer (paths, commands, settings).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from automigrator.cli import parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
APP = (ROOT / "examples" / "fastapi_app" / "app.py").read_text()
ROUTES = set(re.findall(r'@app\.get\("([^"]+)"\)|app\.add_route\("([^"]+)"', APP))
ROUTES = {path for pair in ROUTES for path in pair if path}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def web(doc: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in pod(doc)["containers"] if c["name"] == "web"]
    found: dict[str, Any] = container
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_every_deployment_probes_real_routes(name: str) -> None:
    deployments = [d for d in documents(name) if d["kind"] == "Deployment"]
    assert deployments
    for doc in deployments:
        container = web(doc)
        assert (
            doc["spec"]["selector"]["matchLabels"] == doc["spec"]["template"]["metadata"]["labels"]
        )
        assert container["readinessProbe"]["httpGet"]["path"] in ROUTES
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert "/livez" in ROUTES
        assert "DATABASE_URL" in env(container)


def test_in_process_serves_at_once_and_outlives_a_running_revision() -> None:
    [doc] = documents("in-process.yaml")
    assert env(web(doc))["BLOCK_STARTUP"] == "0"
    assert "RUN_MIGRATIONS" not in env(web(doc))
    # shutdown_timeout is 30 s: the grace period must let a revision finish.
    assert pod(doc)["terminationGracePeriodSeconds"] > 30
    assert 'exempt=["/livez", "/readyz"]' in APP


def command_args(command: list[str]) -> Any:
    assert command[0] == "automigrator"
    return parser().parse_args(command[1:])  # the real CLI parser: flags must exist


def test_job_migrates_and_the_pods_only_check() -> None:
    job, deployment = documents("job-and-check.yaml")
    assert job["kind"] == "Job"
    [container] = pod(job)["containers"]
    assert command_args(container["command"]).command == "upgrade"
    assert "AUTOMIGRATOR_URL" in env(container)
    assert pod(job)["restartPolicy"] in ("Never", "OnFailure")
    assert env(web(deployment))["RUN_MIGRATIONS"] == "0"
    assert env(web(deployment))["WHEN_DISABLED"] == "check"


def test_init_container_waits_and_the_app_never_migrates() -> None:
    [doc] = documents("init-container.yaml")
    [init] = pod(doc)["initContainers"]
    args = command_args(init["command"])
    assert args.command == "wait"
    assert args.timeout == 600
    assert env(web(doc))["RUN_MIGRATIONS"] == "0"
