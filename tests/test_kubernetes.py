"""deploy/kubernetes/ without a cluster: strict schemas of two releases, the restricted Pod Security profile, secrets.

Secrets come by reference only, and probes and shutdown are as docs/kubernetes.md promises. The pod template runs
for real under podman in tests/test_container.py.
"""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
import yaml

from tests.servers import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
RELEASES = ("1.36.0", "1.37.0")  # the two newest kubernetes-validate (pinned) has schemas for
MANIFESTS = sorted(path for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")
# The volume kinds the restricted profile allows (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|REDIS_URL|CREDENTIAL", re.IGNORECASE)
GRACEFUL_TIMEOUT = 20  # gunicorn.conf.py's (the image's GUNICORN_CMD_ARGS says 8, unless an operator replaces it)


def documents(path) -> list[dict]:
    """Return the resources of one manifest file."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def resources() -> list[dict]:
    """Return every resource of every manifest."""
    return [resource for path in MANIFESTS for resource in documents(path)]


def pod_templates() -> list[tuple[str, dict]]:
    """Return (name, pod spec) of every workload's pod template."""
    return [(r["metadata"]["name"], r["spec"]["template"]["spec"]) for r in resources() if r["kind"] in ("Deployment", "StatefulSet")]


def app_deployment() -> dict:
    """Return the ice-servers Deployment."""
    return next(r for r in resources() if r["kind"] == "Deployment" and r["metadata"]["name"] == "ice-servers")


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_validates_strictly_against_the_release(path, release):
    for resource in documents(path):
        kubernetes_validate.validate(resource, release, strict=True)


def test_strict_validation_refuses_a_field_the_schema_lacks():
    deployment = copy.deepcopy(app_deployment())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, RELEASES[-1], strict=True)


def test_kustomization_lists_the_core_manifests_and_leaves_the_examples_out():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {"namespace.yaml", "configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"}
    assert kustomization["namespace"] == "ice-servers"
    namespace = next(r for r in resources() if r["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all((KUBERNETES / name).is_file() for name in kustomization["resources"])


@pytest.mark.parametrize(("name", "spec"), pod_templates(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_pod_template_meets_the_restricted_pod_security_profile(name, spec):
    pod_security = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False
    assert not any(spec.get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
    assert all(set(volume) - {"name"} <= RESTRICTED_VOLUMES for volume in spec.get("volumes", []))
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container.get("securityContext", {})
        assert context.get("allowPrivilegeEscalation") is False, container["name"]
        assert context.get("privileged") in (None, False)
        assert context["capabilities"]["drop"] == ["ALL"] and set(context["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
        assert context.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
        assert context.get("runAsUser", pod_security.get("runAsUser")) not in (None, 0)
        seccomp = context.get("seccompProfile", pod_security.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
        assert context.get("readOnlyRootFilesystem") is True
        assert not any("hostPort" in port for port in container.get("ports", []))
        # Whatever must be written has a volume of its own.
        assert all(mount["name"] in {volume["name"] for volume in spec.get("volumes", [])} for mount in container.get("volumeMounts", []))


def test_secrets_come_only_from_a_secret_and_no_manifest_holds_one():
    assert not [r for r in resources() if r["kind"] == "Secret"]  # made from the user's .env (docs/kubernetes.md)
    container = app_deployment()["spec"]["template"]["spec"]["containers"][0]
    # The ConfigMap last: where a Secret made from a whole .env names a setting too, the ConfigMap's wins.
    assert container["envFrom"] == [{"secretRef": {"name": "ice-servers-secrets"}}, {"configMapRef": {"name": "ice-servers-settings"}}]
    literals = [variable["name"] for variable in container.get("env", []) if "value" in variable]
    assert not [name for name in literals if SECRET_WORDS.search(name)]
    configmap = next(r for r in resources() if r["kind"] == "ConfigMap")
    assert not [name for name in configmap["data"] if SECRET_WORDS.search(name)]


def test_probes_replicas_spread_and_graceful_shutdown():
    deployment = app_deployment()
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never /readyz: a Redis blip restarts nothing
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    spread = spec["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pause >= 5 and spec["terminationGracePeriodSeconds"] >= pause + GRACEFUL_TIMEOUT
    assert f"graceful_timeout = {GRACEFUL_TIMEOUT}" in (ROOT / "gunicorn.conf.py").read_text()
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["timeoutSeconds"] >= 7  # a cold pod's first /readyz may wait 6 s for a credential


def test_the_service_and_the_disruption_budget_select_the_deployments_pods():
    labels = app_deployment()["spec"]["template"]["metadata"]["labels"]
    service = next(r for r in resources() if r["kind"] == "Service" and r["metadata"]["name"] == "ice-servers")
    budget = next(r for r in resources() if r["kind"] == "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_the_configmaps_settings_are_valid_settings():
    from app.config import load_settings

    configmap = next(r for r in resources() if r["kind"] == "ConfigMap")
    settings = load_settings(configmap["data"])
    assert "192.168.0.0/16" in settings.trusted_proxies and "127.0.0.1" in settings.metrics_allow
