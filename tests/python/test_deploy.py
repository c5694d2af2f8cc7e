"""The deploy files, checked offline (no container engine here): every
manifest parses and is internally consistent, every flag and variable they
use exists in the real binaries, and the gateway configurations they ship
really start a gateway that serves MCP (paths and addresses rewritten to
this machine)."""

import configparser
import os
import re
import shlex
import subprocess
from pathlib import Path

import httpx2
import pytest
import yaml

from conftest import BIN, ROOT, initialize, rpc

DEPLOY = ROOT / "deploy"


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
            want = ({"readinessProbe": "/readyz", "livenessProbe": "/livez"} if d["metadata"]["name"] == "registry-backend"
                    else {"readinessProbe": "/health", "livenessProbe": "/health"})
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
