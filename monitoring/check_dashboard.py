"""Ask a Prometheus every query of the Grafana dashboard, as Grafana would, and print what each returns.

    python monitoring/check_dashboard.py --prometheus http://127.0.0.1:9090 [--require-data]

Grafana's template variables are expanded first (``$source`` once per option), so every query is sent exactly as
a Grafana panel would send it. Exits 1 when a query is rejected (bad PromQL) or, with ``--require-data``, when
one returns no series. Without Grafana this shows what each panel would draw (docs/MONITORING.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboards" / "healthpredict.json"


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, legend, query) for every target, once per value of each template variable it uses."""
    variables = {
        v["name"]: [option["value"] for option in v["options"]] for v in dashboard.get("templating", {}).get("list", [])
    }
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expressions = [target["expr"]]
            for name, values in variables.items():
                if any(f"${name}" in e for e in expressions):
                    expressions = [e.replace(f"${name}", v) for e in expressions for v in values]
            for expr in dict.fromkeys(expressions):
                yield panel["title"], target.get("legendFormat", ""), expr


def query(prometheus: str, expr: str, timeout: float = 10.0) -> dict[str, Any]:
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:  # 400: the expression does not parse
        answer = json.load(exc)
    return answer


def _shown(sample: dict[str, Any]) -> str:
    labels = {k: v for k, v in sample["metric"].items() if k not in ("__name__", "instance")}
    value = sample["value"][1]
    return f"{','.join(f'{k}={v}' for k, v in sorted(labels.items()))} → {value}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL of a Prometheus, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--require-data", action="store_true", help="fail when a query returns no series")
    args = parser.parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    failures = 0
    for title, legend, expr in dashboard_queries(dashboard):
        answer = query(args.prometheus, expr)
        if answer.get("status") != "success":
            failures += 1
            print(f"FAIL  {title} [{legend}]\n      {expr}\n      {answer.get('errorType')}: {answer.get('error')}")
            continue
        result = answer["data"]["result"]
        empty = not result
        failures += int(empty and args.require_data)
        print(f"{'EMPTY' if empty else 'ok   '} {title} [{legend}]: {len(result)} series\n      {expr}")
        for sample in result[:3]:
            print(f"      {_shown(sample)}")
        if len(result) > 3:
            print(f"      … {len(result) - 3} more")
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
