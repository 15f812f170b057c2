"""The image, for real: Debian's podman builds the Dockerfile, runs two read-only containers on one Redis, stops them.

The Redis is compose.yaml's own redis command (persistence off, the default user off, the
least-privilege ACL user), run with this machine's redis-server; the containers take their secrets
as files and run as compose.yaml runs them. A real Prometheus scrapes one with deploy/prometheus's
rules loaded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest
import redis
import requests
import yaml

from app.store.redis import store_key
from tests.cloudflare_stub import API_TOKEN, KEY_ID, CloudflareStub
from tests.containers import RUN_OPTIONS, build, copy_context, image_files, inspect, podman
from tests.servers import ROOT, free_port, wait_until

pytestmark = [pytest.mark.xdist_group("container"), pytest.mark.deploy]

TAG = "localhost/ice-servers:test"
LEAKED = "test-secret-of-the-build-context-not-a-real-one"  # in .env, .git, .venv and .tools of the context
REDIS_PASSWORD = "test-redis-password-not-a-secret"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def compose_run_options() -> list[str]:
    """Return the podman options that compose.yaml's app service asks for (and check it asks for them)."""
    app = COMPOSE["services"]["app"]
    assert app["read_only"] is True and app["tmpfs"] == ["/tmp"] and app["cap_drop"] == ["ALL"]
    assert app["security_opt"] == ["no-new-privileges:true"]
    return ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """Build the image from a copy of the repository that also holds a .env, .git, .venv and .tools with a secret."""
    context = copy_context(tmp_path_factory.mktemp("context"))
    (context / ".env").write_text(f"CLOUDFLARE_API_TOKEN={LEAKED}\n")
    for folder in (".git", ".venv", ".tools"):
        (context / folder).mkdir(exist_ok=True)
        (context / folder / "leftover").write_text(LEAKED)
    build(context, TAG, tmp_path_factory.mktemp("build"))
    yield TAG
    podman("rmi", "--force", TAG, check=False)


class Container:
    """One container of the image on the host's network, as compose.yaml runs the app."""

    def __init__(self, image: str, port: int, env: dict[str, str], mounts: dict[str, str]):
        """Prepare; ``start`` runs it. ``mounts``: host file -> path in the container (read-only)."""
        self.name = f"ice-servers-test-{uuid.uuid4().hex[:8]}"
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.args = [*RUN_OPTIONS, *compose_run_options(), "--name", self.name, "-e", f"PORT={port}"]
        for name, value in env.items():
            self.args += ["-e", f"{name}={value}"]
        for source, target in mounts.items():
            self.args += ["-v", f"{source}:{target}:ro"]
        self.image = image

    def start(self) -> Container:
        """Start detached and wait until /healthz answers."""
        podman("run", "--detach", *self.args, self.image)
        wait_until(self._healthy, 30, interval=0.2, what=f"{self.name} answering")
        return self

    def get(self, path: str = "/api/ice-servers", **kwargs) -> requests.Response:
        """GET a path of this container."""
        return requests.get(self.base_url + path, timeout=15, **kwargs)

    def logs(self) -> list[str]:
        """Return the container's output, line by line (stdout and stderr)."""
        done = podman("logs", self.name)
        return (done.stdout + done.stderr).splitlines()

    def remove(self) -> None:
        """Remove the container, running or not."""
        podman("rm", "--force", "--time", "0", self.name, check=False)

    def _healthy(self) -> bool:
        """Tell whether /healthz answers 200 (and fail at once if the container exited)."""
        if inspect(self.name)["State"]["Status"] == "exited":
            raise RuntimeError(f"{self.name} exited: {self.logs()[-5:]}")
        try:
            return self.get("/healthz").status_code == 200
        except requests.RequestException:
            return False


class ComposeRedis:
    """compose.yaml's redis service command, run with this machine's redis-server on a loopback port."""

    def __init__(self, secrets_dir):
        """Write the Redis URL secret (as docs/container.md says) and prepare the command."""
        self.port = free_port()
        self.url_file = secrets_dir / "redis-url"
        self.url_file.write_text(f"redis://ice-servers:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0\n")
        self.url_file.chmod(0o444)
        script = COMPOSE["services"]["redis"]["entrypoint"][2].replace("$$", "$").replace("/run/secrets/redis-url", str(self.url_file))
        self.script = script.replace("exec redis-server", f"exec redis-server --port {self.port} --bind 127.0.0.1 --dir {secrets_dir}")
        self.process = None

    def start(self) -> ComposeRedis:
        """Start and wait until the service's user can PING it."""
        self.process = subprocess.Popen(["sh", "-c", self.script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, what="compose's redis")
        return self

    def client(self) -> redis.Redis:
        """Return a client as the service's ACL user."""
        return redis.Redis(port=self.port, username="ice-servers", password=REDIS_PASSWORD, socket_timeout=2)

    def stop(self) -> None:
        """Stop the server."""
        self.process.kill()
        self.process.wait(10)

    def _answers(self) -> bool:
        """Tell whether the service's user can PING."""
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False


@pytest.fixture(scope="module")
def fleet(image, tmp_path_factory):
    """Two containers (A with three workers) on compose's Redis, Cloudflare's stand-in, secrets as files."""
    secrets = tmp_path_factory.mktemp("secrets")
    token_file = secrets / "cloudflare-api-token"
    token_file.write_text(API_TOKEN + "\n")
    token_file.chmod(0o444)
    store = ComposeRedis(secrets).start()
    stub = CloudflareStub().start()
    env = {
        "CLOUDFLARE_TURN_TOKEN_ID": KEY_ID,
        "CLOUDFLARE_API_TOKEN_FILE": "/run/secrets/cloudflare-api-token",
        "CLOUDFLARE_API_BASE": stub.base_url,
        "REDIS_URL_FILE": "/run/secrets/redis-url",
        "ICE_TRUSTED_PROXIES": "127.0.0.1",
    }
    mounts = {str(token_file): "/run/secrets/cloudflare-api-token", str(store.url_file): "/run/secrets/redis-url"}
    a = Container(image, free_port(), {**env, "WEB_CONCURRENCY": "3"}, mounts)
    b = Container(image, free_port(), env, mounts)
    try:
        a.start()
        b.start()
        yield {"a": a, "b": b, "stub": stub, "redis": store, "image": image}
    finally:
        for container in (a, b):
            container.remove()
        stub.stop()
        store.stop()


def test_the_image_holds_no_secret_and_only_what_it_runs(image, tmp_path):
    files = image_files(image, tmp_path)
    names = []
    for member in files:
        names.append(member.name)
        if member.isfile() and member.size < 50_000_000:
            assert LEAKED.encode() not in files.extractfile(member).read(), member.name
    assert not [name for name in names if re.search(r"(^|/)\.env$|/\.git/|leftover", name)]
    assert "opt/ice-servers/wsgi.py" in names and "opt/ice-servers/gunicorn.conf.py" in names
    assert not [name for name in names if name.startswith(("opt/ice-servers/tests", "opt/ice-servers/deploy"))]
    size_mb = inspect(image)["Size"] / 1e6
    print(f"image size: {size_mb:.0f} MB")
    assert size_mb < 260  # about 200 MB: Debian slim, its Python 3.11, the venv; no build tools, no pip


def test_the_image_runs_as_a_user_and_checks_its_health_with_the_standard_library(image):
    image_config = inspect(image)
    config = image_config["Config"]
    assert config["User"] == "ice-servers"
    assert config["Env"] and "PORT=8000" in config["Env"]
    test = image_config["Healthcheck"]["Test"]  # kept by the docker format (the OCI one drops it)
    assert test[0] == "CMD" and test[1] == "python3" and "urllib.request" in test[-1] and "curl" not in " ".join(test)
    assert config["Cmd"] == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]


def test_two_containers_on_one_redis_share_one_credential(fleet):
    a, b, stub = fleet["a"], fleet["b"], fleet["stub"]
    first = a.get(headers={"X-Request-ID": "test-request-7"})
    assert first.status_code == 200 and first.headers["X-Request-ID"] == "test-request-7"
    answers = [container.get() for container in (a, b) for _ in range(10)]
    usernames = {server.get("username") for answer in [first, *answers] for server in answer.json()["iceServers"] if "username" in server}
    assert usernames == {"stub-user-1"} and stub.call_count == 1
    assert {answer.json()["source"] for answer in answers} == {"cloudflare"}
    assert a.get("/readyz").json()["checks"] == {"redis": "ok", "upstream": "ok"}
    assert fleet["redis"].client().get(store_key("credential")) is not None  # one record, read as the service's ACL user


def test_a_container_is_read_only_non_root_and_healthy(fleet):
    a = fleet["a"]
    assert podman("exec", a.name, "id", "-u").stdout.strip() == "10001"
    refused = podman("exec", a.name, "touch", "/opt/ice-servers/app/new-file", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert podman("exec", a.name, "touch", "/tmp/scratch", check=False).returncode == 0  # the tmpfs
    assert podman("exec", a.name, "cat", "/proc/1/status").stdout.count("CapEff:\t0000000000000000") == 1
    assert podman("healthcheck", "run", a.name, check=False).returncode == 0


def test_logs_are_json_lines_with_the_request_id_and_no_secret(fleet):
    a = fleet["a"]
    lines = [line for line in a.logs() if not line.startswith("time=")]  # podman's own complaints about systemd timers
    entries = [json.loads(line) for line in lines]  # every line one JSON object
    assert sum(entry["message"].startswith("Booting worker") for entry in entries) == 3  # WEB_CONCURRENCY
    assert any(entry["message"] == f"Listening at: http://0.0.0.0:{a.port} (1)" for entry in entries)  # PORT, every address
    fetched = [entry for entry in entries if entry["message"] == "Generating new Cloudflare TURN credentials"]
    assert [entry.get("request_id") for entry in fetched] == ["test-request-7"]  # the request that caused it
    joined = "\n".join(lines)
    assert API_TOKEN not in joined and REDIS_PASSWORD not in joined


def test_prometheus_scrapes_a_container_and_the_rules_load(fleet, tmp_path):
    a = fleet["a"]
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
                "scrape_configs": [{"job_name": "ice-servers", "static_configs": [{"targets": [f"127.0.0.1:{a.port}"]}]}],
            }
        )
    )
    server = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}"]
        + [f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expression):
        try:
            return requests.get(f"{api}/query", params={"query": expression}, timeout=2).json()["data"]["result"]
        except (requests.RequestException, ValueError, KeyError):
            return []

    try:
        wait_until(lambda: query('ice_requests_total{source="cloudflare"}'), 30, interval=0.5, what="a scrape")
        assert query('up{job="ice-servers"}')[0]["value"][1] == "1"
        assert float(query("min(ice_credential_expiry_timestamp_seconds) - time()")[0]["value"][1]) > 23 * 3600
        groups = requests.get(f"{api}/rules", timeout=2).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        wait_until(lambda: all(rule.get("lastEvaluation", "").startswith("2") for rule in rules), 10, what="rules evaluated")
        rules = [rule for group in requests.get(f"{api}/rules", timeout=2).json()["data"]["groups"] for rule in group["rules"]]
        assert len(rules) == 9 and {rule["health"] for rule in rules} == {"ok"}
        assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []  # a healthy fleet alerts on nothing
    finally:
        server.terminate()
        server.wait(10)


def test_sigterm_drains_the_workers_and_exits_0_within_10_s(fleet, tmp_path):
    # A cold container of its own (no Redis): its first request waits 3 s on the upstream while the stop arrives.
    stub = fleet["stub"]
    token = tmp_path / "token"
    token.write_text(API_TOKEN)
    token.chmod(0o444)
    env = {"CLOUDFLARE_TURN_TOKEN_ID": KEY_ID, "CLOUDFLARE_API_TOKEN_FILE": "/run/secrets/token", "CLOUDFLARE_API_BASE": stub.base_url}
    cold = Container(fleet["image"], free_port(), env, {str(token): "/run/secrets/token"})
    try:
        cold.start()
        stub.delay = 3.0
        calls = stub.call_count
        answer = {}
        request = threading.Thread(target=lambda: answer.update(response=cold.get()))
        request.start()
        wait_until(lambda: stub.call_count > calls, 10, what="the request waiting on the upstream")
        started = time.monotonic()
        podman("stop", "--time", "10", cold.name, timeout=30)
        stopped_after = time.monotonic() - started
        request.join(15)
        state = inspect(cold.name)["State"]
        assert answer["response"].status_code == 200 and answer["response"].json()["source"] == "cloudflare"  # drained, not cut
        assert state["ExitCode"] == 0 and stopped_after < 10  # gunicorn's own exit, not podman's SIGKILL
        assert any(json.loads(line)["message"] == "Shutting down: Master" for line in cold.logs() if line.startswith("{"))
    finally:
        stub.delay = 0.0
        cold.remove()


def test_a_bad_port_stops_the_container_with_one_line(image):
    name = f"ice-servers-test-{uuid.uuid4().hex[:8]}"
    try:
        done = podman("run", "--name", name, *RUN_OPTIONS, "-e", "PORT=80\u00b2", image, check=False, timeout=60)
        assert done.returncode == 1
        assert "ice-servers: PORT must be a whole number from 1 to 65535, got '80\u00b2'" in done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    finally:
        podman("rm", "--force", name, check=False)


def test_the_kubernetes_pod_template_plays_under_podman_ready_serving_turn_non_root_read_only(fleet, tmp_path):
    """deploy/kubernetes/deployment.yaml's pod template, as `podman kube play` runs it: its own securityContext and volumes.

    Only what a cluster would fill in is filled in here: the image, and the environment its ConfigMap and Secret give
    (podman 4.3 keeps no Kubernetes Secret), pointing at the test's Redis and Cloudflare stand-in; the port, which
    a cluster resolves by its name, since the pod runs on the host's network as every container test here does.
    """
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    settings = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())["data"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    port = free_port()
    container["image"] = fleet["image"]
    assert container.pop("envFrom") == [{"secretRef": {"name": "ice-servers-secrets"}}, {"configMapRef": {"name": "ice-servers-settings"}}]
    env = {
        **settings,
        "ICE_TRUSTED_PROXIES": "127.0.0.1",
        "ICE_METRICS_ALLOW": "127.0.0.1",
        "PORT": str(port),
        "CLOUDFLARE_TURN_TOKEN_ID": KEY_ID,
        "CLOUDFLARE_API_TOKEN": API_TOKEN,
        "CLOUDFLARE_API_BASE": fleet["stub"].base_url,
        "REDIS_URL": fleet["redis"].url_file.read_text().strip(),
    }
    container["env"] = [{"name": name, "value": value} for name, value in env.items()]
    # On the host's network podman publishes nothing (it refuses port mappings there): the probes name the port itself.
    assert container.pop("ports") == [{"name": "http", "containerPort": 8000}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
        container[probe]["httpGet"]["port"] = port
    name = f"ice-servers-kube-{uuid.uuid4().hex[:6]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": deployment["spec"]["template"]["metadata"]["labels"]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump({**pod, "spec": spec}))
    # This sandbox's rlimits are below what podman asks by default: the same ulimits as RUN_OPTIONS, in containers.conf.
    (tmp_path / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n')
    env_conf = {"CONTAINERS_CONF": str(tmp_path / "containers.conf")}
    played = subprocess.run(
        ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "kube", "play", "--network", "host", str(tmp_path / "pod.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env_conf},
    )
    try:
        assert played.returncode == 0, played.stderr[-2000:]
        base = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return requests.get(f"{base}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, interval=0.3, what="the pod ready on /readyz")
        answer = requests.get(f"{base}/api/ice-servers", timeout=10)
        assert answer.status_code == 200 and answer.json()["source"] == "cloudflare"
        assert any(server.get("username") == "stub-user-1" for server in answer.json()["iceServers"])  # the fleet's one credential
        inside = f"{name}-{container['name']}"
        assert podman("exec", inside, "id", "-u").stdout.strip() == "10001"
        refused = podman("exec", inside, "touch", "/opt/ice-servers/new-file", check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr
        assert podman("exec", inside, "touch", "/tmp/scratch", check=False).returncode == 0  # the emptyDir
        status = podman("exec", inside, "cat", "/proc/1/status").stdout
        assert "CapBnd:\t0000000000000000" in status and "NoNewPrivs:\t1" in status  # drop ALL, no escalation
        played_as = inspect(inside)
        assert played_as["Config"]["User"].split(":")[0] == "10001"  # runAsUser (the image's USER is a name)
        assert played_as["HostConfig"]["ReadonlyRootfs"] is True
        assert [mount["Destination"] for mount in played_as["Mounts"]] == ["/tmp"]  # the emptyDir, and nothing else
        for _ in range(200):
            requests.get(f"{base}/api/ice-servers", timeout=10)
        stats = json.loads(podman("stats", "--no-stream", "--format", "json", inside).stdout)[0]
        print(f"pod memory after 200 requests: {stats.get('mem_usage')}")
        used = float(re.match(r"([0-9.]+)MB", stats["mem_usage"]).group(1))
        assert used < 128 * 1.048576  # under the Deployment's memory request (128 Mi)
    finally:
        podman("pod", "rm", "--force", "--time", "0", name, check=False)
