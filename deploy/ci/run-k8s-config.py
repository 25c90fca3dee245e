#!/usr/bin/env python3
"""Starts the real kaskade binary with the configuration a Kubernetes overlay gives it.

  deploy/ci/run-k8s-config.py --binary target/debug/kaskade [--overlay eu-de-fra]

Renders the overlay (kubectl kustomize), then does what the kubelet would: builds the
container's environment (envFrom, then env with $(VAR) expansion, the downward API
faked), writes the ConfigMap's kaskade.toml and the Secrets' files (API keys, a control
TLS certificate and the node's cascade certificate, made with `kaskade cert`) under a
temporary /etc/kaskade, and runs the DaemonSet's command. It checks that kaskade
accepts the configuration (no exit 64), gets ready, answers /healthz and /readyz on
the pod IP, and exits 0 on SIGTERM.

On this shared machine the pod IP is a loopback address (127.0.0.0/8) and four values
are overridden, each logged: media.port_start=0, cascade.listen and http.listen on
<pod ip>:0 (the real ports may be taken), and no cascade peers (the overlay's are placeholder addresses,
which must not be dialled from here). The rest is the overlay's.
A binary that predates the configuration keys the manifests use (`serve --help`
does not mention KASKADE_SHUTDOWN_GRACE_PERIOD) is skipped with a note.
"""
import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MOUNT = "/etc/kaskade"


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True, type=Path)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--overlay", default="eu-de-fra")
    ap.add_argument("--force", action="store_true", help="run even with a binary that looks too old")
    args = ap.parse_args()
    binary = args.binary.resolve()

    help_text = sh(str(binary), "serve", "--help")
    if "KASKADE_SHUTDOWN_GRACE_PERIOD" not in help_text and not args.force:
        print("k8s config run: skipped: this binary predates the drain/TLS configuration keys "
              "the manifests use (no KASKADE_SHUTDOWN_GRACE_PERIOD in `serve --help`)")
        return 0

    rendered = sh(args.kubectl, "kustomize", str(ROOT / "deploy/k8s/overlays" / args.overlay))
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "kaskade")

    with tempfile.TemporaryDirectory(prefix="kaskade-k8s-") as tmp:
        etc = Path(tmp) / "etc-kaskade"
        pod_ip = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        node_name = "ci-node-1"
        fake_field = {"spec.nodeName": node_name, "status.podIP": pod_ip, "status.hostIP": pod_ip}
        secrets = {"kaskade-api-keys": {"KASKADE_API_KEYS": "ci:" + os.urandom(16).hex()}}

        # The kubelet's environment: envFrom first, then env in order with $(VAR).
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            env.update(cms[src["configMapRef"]["name"]])
        for e in c.get("env", []):
            if "value" in e:
                v = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), e["value"])
            elif "fieldRef" in e.get("valueFrom", {}):
                v = fake_field[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                v = secrets[ref["name"]][ref["key"]]
            env[e["name"]] = v
        node_id, region = env["KASKADE_NODE_ID"], env["KASKADE_NODE_REGION"]

        # Volumes: the ConfigMap's file and the Secrets' files under etc/.
        for m in c["volumeMounts"]:
            target = etc / os.path.relpath(m["mountPath"], MOUNT)
            if m["name"] == "config":
                target.parent.mkdir(parents=True, exist_ok=True)
                vol = next(v for v in pod["volumes"] if v["name"] == "config")
                toml = cms[vol["configMap"]["name"]][m["subPath"]]
                target.write_text(toml.replace(MOUNT + "/", str(etc) + "/"))
        cascade, control = etc / "cascade", etc / "control-tls"
        sh(str(binary), "cert", "dev-cluster", "--out", str(cascade), "--node", f"{node_id}:{region}")
        sh(str(binary), "cert", "node", "--ca", str(cascade / "ca.pem"), "--ca-key",
           str(cascade / "ca.key"), "--id", "control", "--region", region, "--san", pod_ip,
           "--out", str(control))
        (control / "control.pem").rename(control / "tls.crt")
        (control / "control.key").rename(control / "tls.key")
        (cascade / "ca.key").unlink()  # the cluster CA key is never in the Secret

        env = {k: v.replace(MOUNT + "/", str(etc) + "/") for k, v in env.items()}
        overrides = {"KASKADE_MEDIA_PORT_START": "0", "KASKADE_CASCADE_LISTEN": f"{pod_ip}:0",
                     "KASKADE_HTTP_LISTEN": f"{pod_ip}:0", "KASKADE_CASCADE_PEERS": ""}
        for k, v in overrides.items():
            print(f"k8s config run: override {k}={v!r} (was {env.get(k, '<from kaskade.toml>')!r})")
        env.update(overrides)
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        argv = [str(binary)] + [a.replace(MOUNT + "/", str(etc) + "/") for a in c["args"]]
        print(f"k8s config run: overlay {args.overlay}, node id {node_id}, pod IP {pod_ip}: "
              + " ".join(argv[1:]))

        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp)
        try:
            ready = proc.stdout.readline()
            if not ready.startswith("KASKADE_READY "):
                proc.wait(timeout=10)
                print(f"k8s config run: FAIL: exit {proc.returncode} before ready:\n"
                      + proc.stderr.read()[-2000:])
                return 1
            metrics = f"http://{pod_ip}:9464"
            health = {p: http_status(metrics + p) for p in ("/healthz", "/readyz")}
            if health != {"/healthz": 200, "/readyz": 200}:
                print(f"k8s config run: FAIL: {health} on {metrics}")
                return 1
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            if rc != 0:
                print(f"k8s config run: FAIL: exit {rc} after SIGTERM:\n" + proc.stderr.read()[-2000:])
                return 1
            print(f"k8s config run: ok: ready, /healthz and /readyz 200 on {pod_ip}:9464, "
                  f"SIGTERM -> exit 0 in {time.monotonic() - t0:.1f} s")
            return 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
