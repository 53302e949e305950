"""The model card of a logged model (Mitchell et al., "Model Cards for Model Reporting"), made from its run.

Every number comes from the training run that logged the model: the test metrics and their CIs, the subgroup
audit, the calibration curve, the global importance of each input field (mean absolute contribution from the
same explanations ``POST /v1/explain`` answers), the split's manifest, and, when the model was trained by
continuous improvement, the drift history known then. The card is one list of blocks rendered twice, as
Markdown and as HTML (the calibration plot embedded); both travel inside the model folder (``card/``), so the
registered digest covers them, and ``GET /v1/model/card`` serves the served model's own card.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from healthpredict.audit import SubgroupAudit
from healthpredict.evaluate import Evaluation
from healthpredict.features import EXCLUDED_DISCHARGE_IDS
from healthpredict.model_format import CARD_DIR

__all__ = [
    "CARD_DIR", "HTML_FILE", "MARKDOWN_FILE", "CardContext", "card_blocks", "card_files", "render_html",
    "render_markdown",
]  # fmt: skip
MARKDOWN_FILE = "model_card.md"
HTML_FILE = "model_card.html"
CALIBRATION_FILE = "calibration.png"
GAP_METRICS = ("false_negative_rate", "false_positive_rate", "selection_rate", "roc_auc")
TOP_FIELDS = 15


@dataclass(frozen=True)
class CardContext:
    """What the card states about one logged model."""

    model_name: str
    family: str
    run_id: str
    target: str
    threshold: float
    threshold_metric: str
    val_auc: float
    evaluation: Evaluation
    audit: SubgroupAudit
    importance: Sequence[tuple[str, float]]  # input field, mean |log-odds contribution| on the test split
    manifest: Mapping[str, Any]
    calibration_png: bytes | None = None
    drift_history: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    rows: Mapping[str, int] = field(default_factory=dict)  # rows of train / val / test actually used


Block = tuple[str, Any]  # ("h2" | "p" | "ul" | "table" | "image", content)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(value: float, low: float, high: float) -> str:
    return _number(value) if math.isnan(low) else f"{_number(value)} [{_number(low)}, {_number(high)}]"


def card_blocks(c: CardContext) -> list[Block]:
    ev, audit = c.evaluation, c.audit
    target = "any readmission (<30 or >30 days)" if c.target == "any" else "readmission within 30 days"
    codes = ", ".join(str(code) for code in sorted(EXCLUDED_DISCHARGE_IDS))
    blocks: list[Block] = [
        ("h1", f"Model card: {c.model_name} ({c.family})"),
        ("p", f"Generated from MLflow run {c.run_id}; every figure below comes from that run."),
        ("h2", "Intended use"),
        (
            "ul",
            [
                f"Decision support for clinicians: ranks diabetic inpatients by their risk of {target}, so that "
                "follow-up (e.g. referral to a care-management programme) reaches those most likely to return.",
                "A risk score, not a diagnosis: a clinician reviews every decision it informs.",
                f"At the shipped threshold {c.threshold:.3f} (chosen on validation data by {c.threshold_metric}), "
                f"{_number(ev.recall)} of the test split's readmissions are flagged; the other "
                f"{_number(1 - ev.recall)} are false negatives, the harm this model can do.",
            ],
        ),
        ("h2", "Out of scope"),
        (
            "ul",
            [
                f"Encounters discharged to hospice or death (discharge codes {codes}): readmission is undefined; the "
                "service refuses them (422).",
                "Patients, hospitals or years unlike the training data (130 US hospitals, 1999-2008).",
                *(
                    ["A 30-day readmission (e.g. HRRP) measure: this model was trained on any readmission."]
                    if c.target == "any"
                    else []
                ),
                "Decisions without clinical review, such as denying or rationing care.",
            ],
        ),
        ("h2", "Data"),
    ]
    cleaning = c.manifest.get("cleaning", {})
    source = c.manifest.get("source", {})
    blocks.append(("ul", [
        f"UCI Diabetes 130-US hospitals 1999-2008, file {source.get('name', '?')} (sha256 "
        f"{str(source.get('sha256', '?'))[:12]}…), split {c.manifest.get('split_id', '?')}.",
        f"Excluded: {cleaning.get('excluded_hospice_or_death', '?')} hospice/death encounters and "
        f"{cleaning.get('excluded_invalid_gender', '?')} with invalid gender, of {cleaning.get('input_rows', '?')}.",
        "Split by patient (patient_nbr): no patient is in two parts. The earliest encounters make train, "
        "validation and test; later encounters form the future batches, in encounter order.",
        "Rows used: " + ", ".join(f"{name} {count}" for name, count in c.rows.items()) + ".",
    ]))  # fmt: skip
    blocks += [
        ("h2", f"Metrics (test split, {ev.rows} encounters, 95% CI by patient bootstrap)"),
        ("table", (("metric", "value"), [
            ("ROC-AUC", _ci(ev.roc_auc, ev.roc_auc_ci_low, ev.roc_auc_ci_high)),
            ("validation ROC-AUC", _number(c.val_auc)),
            ("PR-AUC", _number(ev.pr_auc)), ("Brier score", _number(ev.brier)), ("log loss", _number(ev.log_loss)),
            ("calibration error (10 quantile bins)", _number(ev.calibration_error)),
            (f"precision at {ev.threshold:.3f}", _number(ev.precision)),
            (f"recall at {ev.threshold:.3f}", _number(ev.recall)),
            ("F1", _number(ev.f1)), ("prevalence", _number(ev.prevalence)),
        ])),
        ("h2", "Calibration"),
        ("p", f"Observed readmission rate against the mean predicted probability, in quantile bins of the test "
              f"split. Calibration error {_number(ev.calibration_error)}: a probability is off by about this "
              "much on average. It grows on later batches as prevalence shifts (see the drift history)."),
    ]  # fmt: skip
    if c.calibration_png:
        blocks.append(("image", (CALIBRATION_FILE, c.calibration_png)))
    blocks += _subgroup_blocks(audit)
    blocks += [
        ("h2", "What drives the score"),
        ("p", "Mean absolute contribution of each input field to the log-odds over the test split (one-hot and "
              "derived columns summed back to their field); the same explanations POST /v1/explain returns."),
        ("table", (("field", "mean |contribution| (log-odds)"),
                   [(name, _number(value, 4)) for name, value in list(c.importance)[:TOP_FIELDS]])),
        ("h2", "Drift history"),
    ]  # fmt: skip
    if c.drift_history:
        keys = list(c.drift_history[0])
        blocks.append(("table", (keys, [[_number(row.get(k)) for k in keys] for row in c.drift_history])))
    else:
        blocks.append(
            (
                "p",
                "None when this model was trained: drift is measured on the future batches it scores "
                "(`healthpredict drift`, `healthpredict improve`; MLflow experiment of drift runs).",
            )
        )
    blocks += [
        ("h2", "Limitations"),
        ("ul", [
            "The data has no dates: encounter order stands in for time, so 'future' batches are later encounter "
            "ids, not calendar months.",
            "1999-2008 US hospital records: ICD-9 coding, care practice and the population have changed since.",
            "Race is recorded by the hospitals, and missing for about 2% of encounters; groups with fewer than "
            f"{audit.min_group_rows} test encounters are shown but not compared, and every small group's CIs are wide.",
            "Scores are probabilities calibrated on the training period; later batches are less well calibrated.",
        ]),
    ]  # fmt: skip
    return blocks


def _subgroup_blocks(audit: SubgroupAudit) -> list[Block]:
    headers = ("attribute", "group", "rows", "prevalence", "ROC-AUC", "selection rate", "FNR", "FPR", "Brier",
               "calibration error")  # fmt: skip
    rows = []
    for g in audit.groups:
        v, lo, hi = g.values, g.ci_low, g.ci_high
        rows.append((
            g.attribute, g.group + ("" if g.compared else " (not compared)"), g.rows, _number(v["prevalence"]),
            _ci(v["roc_auc"], lo["roc_auc"], hi["roc_auc"]), _number(v["selection_rate"]),
            _ci(v["false_negative_rate"], lo["false_negative_rate"], hi["false_negative_rate"]),
            _ci(v["false_positive_rate"], lo["false_positive_rate"], hi["false_positive_rate"]),
            _number(v["brier"]), _number(v["calibration_error"]),
        ))  # fmt: skip
    gaps = [
        (gap.attribute, gap.metric, _number(gap.largest_gap), _number(gap.smallest_ratio), " < ".join(gap.groups))
        for gap in audit.gaps() if gap.metric in GAP_METRICS
    ]  # fmt: skip
    return [
        ("h2", f"Subgroups (test split, threshold {audit.threshold:.3f}, {audit.rounds} patient-bootstrap rounds)"),
        ("p", "FNR: readmitted patients the model does not flag (the harm); FPR: flagged patients who are not "
              "readmitted. Brackets: 95% CIs."),
        ("table", (headers, rows)),
        ("p", f"Largest gap (highest minus lowest) and smallest ratio (lowest over highest) between groups of at "
              f"least {audit.min_group_rows} encounters:"),
        ("table", (("attribute", "metric", "largest gap", "smallest ratio", "lowest < highest"), gaps)),
    ]  # fmt: skip


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' if kind == 'h1' else '##'} {content}")
        elif kind == "p":
            out.append(str(content))
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in content))
        elif kind == "table":
            headers, rows = content
            lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "image":
            out.append(f"![calibration]({content[0]})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block]) -> str:
    e = html.escape
    body: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(str(content))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(str(content))}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(str(item))}</li>" for item in content) + "</ul>")
        elif kind == "table":
            headers, rows = content
            head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
            cells = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "image":
            data = base64.b64encode(content[1]).decode()
            body.append(f'<img alt="calibration curve" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
             "th{background:#f4f4f4}img{max-width:28rem}")  # fmt: skip
    title = next((str(c) for k, c in blocks if k == "h1"), "Model card")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip


def card_files(context: CardContext) -> dict[str, bytes]:
    """The card's files, by name inside the model's ``card/`` folder."""
    blocks = card_blocks(context)
    files = {MARKDOWN_FILE: render_markdown(blocks).encode(), HTML_FILE: render_html(blocks).encode()}
    if context.calibration_png:
        files[CALIBRATION_FILE] = context.calibration_png
    return files
