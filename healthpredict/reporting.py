"""Markdown summaries shared by the CLI and the Prefect artifacts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def split_summary_markdown(manifest: Mapping[str, Any]) -> str:
    """The split manifest as a table: one row per part."""
    cleaning = manifest["cleaning"]
    rows = [
        (name, p["rows"], p["positives"], p["prevalence"], p["patients"], p["sha256"][:12])
        for name, p in manifest["parts"].items()
    ]
    header = (
        f"### Split `{manifest['split_id']}`\n\n"
        f"Raw rows {cleaning['input_rows']}; excluded hospice/death {cleaning['excluded_hospice_or_death']}, "
        f"invalid gender {cleaning['excluded_invalid_gender']}; kept {cleaning['output_rows']} "
        f"(target `{manifest['settings']['target']}`, seed {manifest['settings']['seed']}).\n\n"
    )
    return header + markdown_table(("part", "rows", "positives", "prevalence", "patients", "sha256"), rows)
