"""The deploy files, checked offline (no container engine here): the
Kubernetes manifests against the Kubernetes schemas (kubernetes-validate,
strict), the Dockerfile with hadolint, compose.yaml against the Compose
schema, the systemd units with `systemd-analyze verify`; every process they
start passes the real binary's `--check-config`; the manifests keep the
production rules (probes, drains, budgets, policies, TLS-only Service,
securityContext); and the gateway configurations they ship really start a
gateway that serves MCP (paths and addresses rewritten to this machine)."""

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import httpx2
import pytest
import yaml

from conftest import BIN, ROOT, initialize, rpc

DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.34.0"


def helptext(binary):
    return subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True, check=True).stdout


def k8s_docs():
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def invocations():
    """(binary, argv) for every process the deploy files start."""
    out = []
    for d in k8s_docs():
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            binary = Path(c.get("command", ["/usr/local/bin/registry-backend"])[0]).name
            out.append((binary, c.get("args", []), [e["name"] for e in c.get("env", [])]))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        binary = Path(svc.get("entrypoint", ["/usr/local/bin/registry-backend"])[0]).name
        out.append((binary, svc.get("command", []), list(svc.get("environment", {}))))
    for unit in (DEPLOY / "systemd").glob("*.service"):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.read_string(unit.read_text())
        argv = shlex.split(cp["Service"]["ExecStart"])
        envs = [e.split("=", 1)[0] for e in cp["Service"].get("Environment", "").split()]
        out.append((Path(argv[0]).name, argv[1:], envs))
    docker_cmd = re.search(r'^CMD (\[.*\])', (DEPLOY / "docker" / "Dockerfile").read_text(), re.M).group(1)
    out.append(("registry-backend", yaml.safe_load(docker_cmd), []))
    return out


def test_manifests_parse_and_hang_together():
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Service", "registry-backend") in kinds and ("Deployment", "mcp-gateway") in kinds
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for d in docs:
        assert d.get("apiVersion") and d.get("kind")
        if d["kind"] != "Deployment":
            continue
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for c in d["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"] for p in c["ports"]}
            # the registry: liveness must not depend on the store, readiness must;
            # the gateway: its admin listener's /health
            # both: readiness on the draining/store-aware endpoint, liveness on
            # one that depends on neither
            want = {"readinessProbe": "/readyz", "livenessProbe": "/livez"}
            for probe, path in want.items():
                assert c[probe]["httpGet"]["path"] == path, (d["metadata"]["name"], probe)
                assert c[probe]["httpGet"]["port"] in ports
            svc = services[d["metadata"]["name"]]
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    assert services["registry-backend"]["spec"]["clusterIP"] == "None", "DNS discovery needs a headless Service"
    gateway_toml = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["gateway.toml"]
    assert "registry-backend.default.svc.cluster.local" in gateway_toml


def test_the_kubernetes_admin_port_is_fenced_and_has_a_token():
    docs = k8s_docs()
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mcp-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    admin_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "admin")
    # bound beyond loopback, so the token must come from a Secret
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["MCP_GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    # no Service exposes it
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mcp-gateway")
    assert "admin" not in {p["targetPort"] for p in svc["spec"]["ports"]}
    # a NetworkPolicy selecting the gateway admits the admin port only from labelled pods
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and d["spec"]["podSelector"]["matchLabels"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()]
    assert policies, "no NetworkPolicy selects the gateway"
    rules = [r for p in policies for r in p["spec"]["ingress"]]
    admin_rules = [r for r in rules if any(port["port"] in (admin_port, "admin") for port in r.get("ports", []))]
    assert admin_rules and all(r.get("from") for r in admin_rules), admin_rules
    # and no rule opens every port (a rule without ports)
    assert all(r.get("ports") for r in rules)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "MCP_GATEWAY_ADMIN_TOKEN" in compose["services"]["gateway"]["environment"]


def test_every_flag_and_variable_exists_in_the_binaries():
    helps = {b: helptext(b) for b in ["registry-backend", "mcp-gateway"]}
    seen = 0
    for binary, argv, envs in invocations():
        for arg in argv:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert re.search(rf"{re.escape(flag)}\b", helps[binary]), f"{binary} has no {flag}"
                seen += 1
        for env in envs:
            assert env in helps[binary], f"{binary} does not read {env}"
    assert seen >= 10


def rewritten_config(text, gw_tmp: Path, backend_addr: str, tls_dir: Path, key_file: Path, ports):
    host, port = backend_addr.split(":")
    text = re.sub(r'name = "[^"]+", port = \d+', f'name = "localhost", port = {port}', text)
    text = re.sub(r'backends = \[[^\]]*\]', f'backends = ["{backend_addr}"]', text)
    for kind, p in zip(["http", "https", "admin"], ports):
        text = re.sub(rf'^{kind} = "[^"]+"', f'{kind} = "127.0.0.1:{p}"', text, flags=re.M)
    text = text.replace("/tls/tls.crt", str(tls_dir / "cert.pem")).replace("/tls/tls.key", str(tls_dir / "key.pem"))
    return text.replace("/secrets/session.key", str(key_file))


@pytest.mark.parametrize("source", ["k8s", "systemd"])
def test_shipped_gateway_configs_really_serve_mcp(stack, tmp_path, source):
    from conftest import free_port, wait_until, Proc
    if source == "k8s":
        text = next(d for d in k8s_docs() if d["kind"] == "ConfigMap")["data"]["gateway.toml"]
    else:
        text = (DEPLOY / "systemd" / "gateway.toml.example").read_text()
    from conftest import SESSION_KEY, listens_on
    # Kubernetes: the key comes from the config's key_file only; systemd: from
    # the unit's environment file. Either way it is the test stack gateway's
    # key, so a session opened here must route there — proof it was read.
    key_file = tmp_path / "session.key"
    key_file.write_text(SESSION_KEY + "\n")
    env = {k: v for k, v in os.environ.items() if k != "MCP_GATEWAY_SESSION_KEY"}
    if source == "systemd":
        env["MCP_GATEWAY_SESSION_KEY"] = SESSION_KEY
    for _ in range(4):
        ports = [free_port(), free_port(), free_port()]
        conf = tmp_path / "gateway.toml"
        conf.write_text(rewritten_config(text, tmp_path, stack.backends[0].addr, stack.gw.tls_dir, key_file, ports))
        proc = Proc([str(BIN / "mcp-gateway"), "--config", str(conf)], env={**env, "RUST_LOG": "warn"},
                    name=f"gateway-{source}")
        proc.read_line_matching("mcp-gateway ready")
        wait_until(lambda: proc.p.poll() is not None or all(listens_on(proc.p.pid, p) for p in ports
                                                             if f":{p}" in conf.read_text()), 60, "ports")
        if proc.p.poll() is None:
            break
    try:
        admin = f"http://127.0.0.1:{ports[2]}"
        wait_until(lambda: any(b["healthy"] for b in httpx2.get(f"{admin}/backends", timeout=2).json()["pools"][0]["backends"]),
                   30, "the shipped config's pool to become healthy")
        https = f'https = "127.0.0.1:{ports[1]}"' in conf.read_text()
        assert https or source == "systemd", "the Kubernetes config serves HTTPS"
        url = f"https://127.0.0.1:{ports[1]}/mcp" if https else f"http://127.0.0.1:{ports[0]}/mcp"
        with httpx2.Client(timeout=10, verify=stack.gw.ssl_context()) as c:
            sid, _ = initialize(c, url)
            assert rpc(c, url, sid, "tools/list").status_code == 200
            # the stack's gateway has the same key (from its environment): it routes this session
            assert rpc(c, f"{stack.gw.http}/mcp", sid, "tools/list").status_code == 200
    finally:
        proc.stop()


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)


def test_kubernetes_manifests_pass_strict_schema_validation():
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    r = run([VENV_BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, *files])
    assert r.returncode == 0, r.stdout + r.stderr
    # every document was checked
    assert r.stdout.count(" passed for resource ") == len(k8s_docs()), r.stdout


def test_the_dockerfile_passes_hadolint():
    r = run([VENV_BIN / "hadolint", "--no-color", DEPLOY / "docker" / "Dockerfile"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_file_matches_the_compose_schema():
    import jsonschema
    schema = json.loads((resources.files("compose") / "config" / "compose_spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)  # the draft the schema is written in
    validator.validate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))
    # and the schema does reject what Compose rejects
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"services": {"x": {"stop_grace_period": 45}}})


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed here")
    units = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        # the binaries as built here (verify checks ExecStart is executable)
        text = unit.read_text().replace("/usr/local/bin/", f"{BIN}/")
        (tmp_path / unit.name).write_text(text)
        units.append(tmp_path / unit.name)
    assert len(units) == 2
    r = run([analyze, "verify", *units], cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def configs_for_check(tmp_path):
    """The gateway configuration files the deploy files name, on this machine."""
    k8s = tmp_path / "k8s-gateway.toml"
    k8s.write_text(next(d for d in k8s_docs() if d["kind"] == "ConfigMap")["data"]["gateway.toml"])
    return {"/etc/mcp-gateway/gateway.toml": k8s, "/etc/mcp/gateway.toml": DEPLOY / "systemd" / "gateway.toml.example"}


def test_every_process_the_deploy_files_start_passes_check_config(tmp_path):
    configs = configs_for_check(tmp_path)
    checked = 0
    for binary, argv, _envs in invocations():
        # systemd's instance specifier, as for registry-backend@1
        argv = [str(configs.get(a, a)).replace("%i", "1") for a in argv]
        # what the manifests give from Secrets and env files
        env = {**os.environ, "MCP_GATEWAY_ADMIN_TOKEN": "t" * 32}
        r = run([BIN / binary, *argv, "--check-config"], env=env)
        assert r.returncode == 0 and r.stdout.startswith("configuration OK"), (binary, argv, r.stdout, r.stderr)
        checked += 1
    assert checked >= 8, checked


def test_check_config_refuses_what_the_gateway_would_refuse(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listen]\nhttp = "127.0.0.1:1"\nadmin = "0.0.0.0:9090"\n[[pools]]\nname = "r"\n'
                   'discovery = { static = { backends = ["127.0.0.1:2"] } }\n')
    env = {k: v for k, v in os.environ.items() if k != "MCP_GATEWAY_ADMIN_TOKEN"}
    r = run([BIN / "mcp-gateway", "--config", bad, "--check-config"], env=env)
    assert r.returncode != 0 and "not on loopback" in r.stderr, r.stderr
    bad.write_text('[listen]\nhttp = "127.0.0.1:1"\nbogus = 1\n')
    r = run([BIN / "mcp-gateway", "--config", bad, "--check-config"], env=env)
    assert r.returncode != 0 and "bogus" in r.stderr, r.stderr
    r = run([BIN / "registry-backend", "--listen", "nowhere", "--check-config"])
    assert r.returncode != 0 and "listen" in r.stderr, r.stderr


def deployment(name):
    return next(d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def selects(selector, labels):
    return selector["matchLabels"].items() <= labels.items()


def test_kubernetes_deployments_keep_the_production_rules():
    docs = k8s_docs()
    gateway_toml = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["gateway.toml"])
    for name in ("mcp-gateway", "registry-backend"):
        d = deployment(name)
        spec = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        # the pod's grace period covers preStop and the process's whole stop
        if name == "registry-backend":
            drain = int(c["args"][c["args"].index("--drain-timeout") + 1].rstrip("s"))
        else:
            drain = gateway_toml["shutdown_grace_secs"] + gateway_toml["shutdown_timeout_secs"]
        assert spec["terminationGracePeriodSeconds"] > pre_stop + drain, name
        assert any(p["kind"] == "PodDisruptionBudget" and selects(p["spec"]["selector"], labels) for p in docs), name
        # several replicas, more under load (CPU)
        hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
                   and d["spec"]["scaleTargetRef"]["name"] == name)
        assert hpa["spec"]["minReplicas"] >= 2 and d["spec"]["replicas"] >= 2, name
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"], name


def test_the_public_service_serves_tls_only_and_backends_take_traffic_only_from_the_gateway():
    docs = k8s_docs()
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mcp-gateway")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(443, "https")]
    gateway_toml = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["gateway.toml"])
    assert "http" not in gateway_toml["listen"], "no plain-HTTP listener in the cluster"
    gw_labels = deployment("mcp-gateway")["spec"]["template"]["metadata"]["labels"]
    backend_labels = deployment("registry-backend")["spec"]["template"]["metadata"]["labels"]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], backend_labels))
    mcp_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == 8090 for p in r["ports"])]
    sources = [f for rule in mcp_rules for f in rule["from"]]
    assert sources and all(selects(f["podSelector"], gw_labels) and "namespaceSelector" not in f for f in sources)
    # every rule names its ports (none opens the pod whole)
    assert all(r.get("ports") for r in policy["spec"]["ingress"])
    gw_policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], gw_labels))
    admin = [r for r in gw_policy["spec"]["ingress"] if any(p["port"] == 9090 for p in r["ports"])]
    assert admin and all(f["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
                         for r in admin for f in r["from"])


def test_gateway_replicas_share_a_redis_that_only_they_reach():
    docs = k8s_docs()
    gateway_toml = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["gateway.toml"])
    cluster = gateway_toml["cluster"]
    redis = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "mcp-gateway-redis")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mcp-gateway-redis")
    assert cluster["store"].startswith(f"redis://{svc['metadata']['name']}.default.svc.cluster.local:6379/")
    assert svc["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    # the fail-open divisor is the autoscaler's floor
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
               and d["spec"]["scaleTargetRef"]["name"] == "mcp-gateway")
    assert cluster["replicas"] == hpa["spec"]["minReplicas"]
    # one Secret holds the password the gateway sends and Redis requires
    (c,) = deployment("mcp-gateway")["spec"]["template"]["spec"]["containers"]
    gw_secret = next(e for e in c["env"] if e["name"] == "MCP_GATEWAY_STORE_PASSWORD")["valueFrom"]["secretKeyRef"]
    (r,) = redis["spec"]["template"]["spec"]["containers"]
    redis_secret = next(e for e in r["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert (gw_secret["name"], gw_secret["key"]) == (redis_secret["name"], redis_secret["key"])
    assert "$(REDIS_PASSWORD)" in r["args"] and "volatile-ttl" in r["args"]
    # only gateway pods connect
    gw_labels = deployment("mcp-gateway")["spec"]["template"]["metadata"]["labels"]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy"
                  and selects(d["spec"]["podSelector"], redis["spec"]["template"]["metadata"]["labels"]))
    sources = [f for rule in policy["spec"]["ingress"] for f in rule["from"]]
    assert sources and all(selects(f["podSelector"], gw_labels) for f in sources)
    # Compose: three replicas behind the balancer, the same store
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert compose["gateway"]["deploy"]["replicas"] >= 2 and "redis" in compose
    assert "redis://redis:6379/" in compose["gateway"]["environment"]["MCP_GATEWAY_STORE"]
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    assert re.search(r"server-template \w+ \d+ gateway:8080", haproxy) and "port 9090" in haproxy
    assert any("haproxy.cfg" in v for v in compose["balancer"]["volumes"])
    assert compose["balancer"]["ports"] == ["8080:8080"]


def test_compose_and_systemd_run_the_same_shape():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    compose_backends = sorted(n for n, s in compose.items() if "build" in s and "entrypoint" not in s)
    gateway_args = compose["gateway"]["command"]
    assert sorted(a.split(":")[0] for a in gateway_args if a.endswith(":8090")) == compose_backends
    assert len(compose_backends) == 3 and "mongo" in compose
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((DEPLOY / "systemd" / "mcp-gateway.service").read_text())
    wanted = unit["Unit"]["Wants"].split()
    example = tomllib.loads((DEPLOY / "systemd" / "gateway.toml.example").read_text())
    backends = example["pools"][0]["discovery"]["static"]["backends"]
    assert len(wanted) == len(backends) == 3
    assert [f"127.0.0.1:809{w.split('@')[1].split('.')[0]}" for w in wanted] == backends
    service = unit["Service"]
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert service[key] in ("true", "strict"), key
    # stop timeouts longer than the drains
    assert int(service["TimeoutStopSec"]) > example["shutdown_grace_secs"] + example["shutdown_timeout_secs"]
