#!/usr/bin/env python3
"""Sanity checks of the Grafana dashboard and the Prometheus rules' metric names.

  deploy/ci/check-dashboard.py

- deploy/grafana/kaskade.json is valid JSON with a uid, unique panel ids, panels inside
  the 24-column grid, every query on the ${datasource} variable, and every template
  variable it uses defined;
- every metric name in a dashboard query or a rule expression is in
  deploy/ci/metrics.txt (the metric contract), a recording rule of
  deploy/prometheus/kaskade-rules.yml, or `up`;
- every contracted metric is shown on some dashboard panel.
- every dashboard query parses as PromQL: with its Grafana variables replaced by
  sample values, it is written into a temporary rules file for `promtool check rules`
  (Prometheus's own parser; skipped with a note when promtool is not installed).
Needs PyYAML. Exits 1 with one line per problem.
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "kaskade.json"
RULES = ROOT / "deploy" / "prometheus" / "kaskade-rules.yml"
CONTRACT = ROOT / "deploy" / "ci" / "metrics.txt"

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
BUILTIN_SERIES = {"up"}
GRAFANA_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


def contract() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for line in CONTRACT.read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if line:
            names[line[0]] = set(line[1].split("|"))
    return names


def series_names(contracted: dict[str, set[str]]) -> dict[str, str]:
    """Every series name a query may use -> the contracted metric it belongs to."""
    out = {}
    for name, types in contracted.items():
        out[name] = name
        if "histogram" in types:
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = name
    return out


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (selectors, not functions or labels)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    e = re.sub(r"\{[^{}]*\}", " ", e)                                  # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                                # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word, rest = m.group(0), e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        if re.match(r"\d", e[m.start() - 1:m.start()] or " "):  # 1e-3, 5m
            continue
        names.add(word)
    return names


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def promtool_parse(queries: list[tuple[str, str]], problems: list[str]) -> str:
    """Parses each (where, expr) with promtool; returns a note for the summary."""
    promtool = shutil.which("promtool")
    if not promtool:
        return "PromQL parse skipped (no promtool)"
    subst = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    for where, expr in queries:
        e = re.sub(r"\$\{?(\w+)\}?", lambda m: subst.get(m[1], "x"), expr)
        rules = {"groups": [{"name": "dashboard", "rules": [{"record": "dashboard:query", "expr": e}]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            yaml.safe_dump(rules, f)
            f.flush()
            out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        if out.returncode != 0:
            err = [l.strip() for l in (out.stderr + out.stdout).splitlines() if "error" in l.lower()]
            problems.append(f"{where}: promtool cannot parse {expr!r}: {' '.join(err)[:300]}")
    return f"{len(queries)} queries parsed by promtool"


def panels(d: dict):
    for p in d.get("panels", []):
        yield p
        yield from panels(p)


def main() -> int:
    problems = []
    contracted = contract()
    known = series_names(contracted)
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}

    def check_expr(where: str, expr: str) -> set[str]:
        if not balanced(expr):
            problems.append(f"{where}: unbalanced brackets in {expr!r}")
        used = metric_names(expr)
        for name in sorted(used - known.keys() - recorded - BUILTIN_SERIES):
            problems.append(f"{where}: {name} is not in deploy/ci/metrics.txt nor a recording rule")
        return used

    for g in rules["groups"]:
        for r in g["rules"]:
            check_expr(f"rules {r.get('record') or r.get('alert')}", str(r["expr"]))

    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        print(f"FAIL {DASHBOARD.relative_to(ROOT)}: not JSON: {e}")
        return 1
    if not dash.get("uid") or not dash.get("title"):
        problems.append("dashboard: needs a uid and a title")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    ids, shown, queries = set(), set(), []
    for p in panels(dash):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(k in g for k in "xywh") or g["x"] < 0 or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos {g} outside the 24-column grid")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where}: query not on the ${{datasource}} variable")
            expr = t.get("expr", "")
            queries.append((where, expr))
            if not expr:
                problems.append(f"{where}: empty query")
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and var not in GRAFANA_VARS:
                    problems.append(f"{where}: uses undefined variable ${var}")
            shown |= {known[n] for n in check_expr(where, expr) if n in known}
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query":
            check_expr(f"variable {v['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q))
    parsed = promtool_parse(queries, problems)
    for name in sorted(contracted.keys() - shown):
        problems.append(f"dashboard: contracted metric {name} is on no panel")
    for p in problems:
        print("FAIL", p)
    print(f"dashboard: {len(ids)} panels, {parsed}; rules: {len(recorded)} recording; "
          f"{len(shown)}/{len(contracted)} contracted metrics shown: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
