#!/usr/bin/env python3
"""Writes deploy/k8s/components/prometheus-operator/prometheusrule.yaml from deploy/prometheus/kaskade-rules.yml.

  deploy/ci/gen-prometheusrule.py           rewrite the PrometheusRule
  deploy/ci/gen-prometheusrule.py --check   exit 1 if it is out of date (CI)

The rules file is the one definition (checked and unit-tested with promtool); the
PrometheusRule is the same groups wrapped for the Prometheus Operator.
"""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "deploy" / "prometheus" / "kaskade-rules.yml"
DST = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/kaskade-rules.yml by deploy/ci/gen-prometheusrule.py:
# edit the rules file, then run the script. CI fails when this file is out of date.
# The Prometheus Operator loads it when the labels below match your Prometheus's
# ruleSelector (add yours in an overlay, e.g. release: kube-prometheus-stack).
"""


class Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(SRC.read_text())["groups"]
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "kaskade", "labels": {"app.kubernetes.io/name": "kaskade"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(obj, Dumper=Dumper, sort_keys=False, width=100)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not DST.exists() or DST.read_text() != text:
            print(f"{DST.relative_to(ROOT)} is out of date: run deploy/ci/gen-prometheusrule.py")
            return 1
        print(f"{DST.relative_to(ROOT)} matches {SRC.relative_to(ROOT)}")
        return 0
    DST.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
