"""Write the Kubernetes PrometheusRule from the alert rules' single source.

    python monitoring/render_k8s_rules.py          # rewrite k8s/components/monitoring/prometheusrule.yaml
    python monitoring/render_k8s_rules.py --check  # exit 1 if the committed file differs

The rules live once, in ``monitoring/prometheus/rules/healthpredict.rules.yml`` (Prometheus's own format, loaded
as it is by the compose stack); the PrometheusRule's ``spec`` is that file's content. A unit test runs ``--check``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "monitoring" / "prometheus" / "rules" / "healthpredict.rules.yml"
TARGET = ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# Generated from monitoring/prometheus/rules/healthpredict.rules.yml by monitoring/render_k8s_rules.py:\n"
    "# edit the source and rerun the script, never this file.\n"
)


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in the source."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStrings.add_representer(str, _string)


def prometheus_rule(groups: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule (prometheus-operator) whose spec is the rules file."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "healthpredict",
            "namespace": "healthpredict",
            "labels": {"app.kubernetes.io/name": "healthpredict-service", "app.kubernetes.io/part-of": "healthpredict"},
        },
        "spec": groups,
    }


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())
    body = yaml.dump(prometheus_rule(groups), Dumper=_BlockStrings, sort_keys=False, width=200, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
