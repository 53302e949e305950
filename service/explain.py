"""Explanations and the model card: ``POST /v1/explain``, ``POST /v1/explain/batch``, ``GET /v1/model/card``.

Bodies are the same records as ``/v1/predict`` with the same strict decoding, error shapes and scope rule.
Each answer holds every input field's contribution to the log-odds and the largest ones
(:mod:`healthpredict.fast_inference.explain`); ``base_value + sum(contributions) == logit``.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from healthpredict.fast_inference.explain import FIELDS, Explainer, Explanations
from healthpredict.model_card import HTML_FILE, MARKDOWN_FILE
from service.controllers import (
    _ERRORS,
    RequestRejected,
    _body_operation,
    read_batch,
    read_record,
    service_state,
    serving,
)
from service.model_manager import ServedModel
from service.schemas import (
    BatchRequest,
    ErrorResponse,
    ExplainBatchResponse,
    ExplainResponse,
    Explanation,
    FieldContribution,
    PatientRecord,
)

#: Fields listed in ``top`` of each explanation.
TOP_FIELDS = 5
#: Explanations of more rows than this run in a worker thread (a TreeSHAP row costs about a millisecond).
THREAD_EXPLAIN_ROWS = 16


def explainer_of(served: ServedModel) -> Explainer:
    if served.explainer is None:
        raise RequestRejected(
            HTTP_503_SERVICE_UNAVAILABLE,
            f"explanations are unavailable for model version {served.version}: {served.explain_error}",
        )
    return served.explainer


def explanation(explained: Explanations, row: int, threshold: float) -> Explanation:
    probability = float(explained.probabilities[row])
    return Explanation(
        probability=probability,
        label=int(probability >= threshold),  # type: ignore[arg-type]
        logit=float(explained.logits[row]),
        contributions=dict(zip(FIELDS, explained.contributions[row].tolist(), strict=True)),
        top=[FieldContribution(field=f, contribution=c) for f, c in explained.top(row, TOP_FIELDS)],
    )


class ExplainController(Controller):
    path = "/v1"
    tags = ("explanations",)

    @post(
        "/explain",
        status_code=HTTP_200_OK,
        operation_class=_body_operation(PatientRecord),
        responses=_ERRORS,
        summary="Readmission probability of one encounter, with each field's contribution to its log-odds",
    )
    async def explain(self, request: Request[Any, Any, Any]) -> ExplainResponse:
        state = service_state(request)
        record = await read_record(request)
        served = serving(state)
        explainer = explainer_of(served)
        rows = [msgspec.structs.astuple(record)]
        if explainer.threaded:  # TreeSHAP: concurrent requests on the usable cores, the event loop kept free
            explained = await anyio.to_thread.run_sync(explainer.explain_rows, rows, limiter=state.explain_limiter)
        else:
            explained = explainer.explain_rows(rows)
        one = explanation(explained, 0, served.threshold)
        return ExplainResponse(
            **msgspec.structs.asdict(one), base_value=explained.base, threshold=served.threshold,
            model_version=served.version,
        )  # fmt: skip

    @post(
        "/explain/batch",
        status_code=HTTP_200_OK,
        operation_class=_body_operation(BatchRequest),
        responses=_ERRORS,
        summary="Explanations of many encounters (all-or-nothing validation)",
    )
    async def explain_batch(self, request: Request[Any, Any, Any]) -> ExplainBatchResponse:
        state = service_state(request)
        records = await read_batch(
            request, state.settings.service.max_explain_records, "HEALTHPREDICT_MAX_EXPLAIN_RECORDS",
            limit_name="the limit for explanations",
        )  # fmt: skip
        served = serving(state)
        explainer = explainer_of(served)
        rows = [msgspec.structs.astuple(r) for r in records]
        if len(rows) > THREAD_EXPLAIN_ROWS:
            explained = await anyio.to_thread.run_sync(explainer.explain_rows, rows)
        else:
            explained = explainer.explain_rows(rows)
        return ExplainBatchResponse(
            explanations=[explanation(explained, k, served.threshold) for k in range(len(rows))],
            base_value=explained.base,
            threshold=served.threshold,
            model_version=served.version,
        )

    @get(
        "/model/card",
        summary="The served model's card: intended use, data, metrics with CIs, subgroups, limitations",
        media_type="text/markdown; charset=utf-8",
        responses={
            HTTP_400_BAD_REQUEST: ResponseSpec(
                ErrorResponse, description="`format` is not one of its values", generate_examples=False
            ),
            HTTP_404_NOT_FOUND: ResponseSpec(
                ErrorResponse, description="The model has no card", generate_examples=False
            ),
            HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(
                ErrorResponse, description="No model loaded yet", generate_examples=False
            ),
        },
    )
    async def card(
        self,
        request: Request[Any, Any, Any],
        format: Literal["markdown", "html"] = Parameter(
            default="markdown", description="`markdown` (default) or `html` (the calibration plot embedded)"
        ),
    ) -> Response[bytes]:
        served = serving(service_state(request))
        name, media = (HTML_FILE, "text/html; charset=utf-8") if format == "html" else (MARKDOWN_FILE, None)
        content = served.info.card.get(name)
        if content is None:
            raise RequestRejected(
                HTTP_404_NOT_FOUND,
                f"model version {served.version} carries no model card (trained before cards were written); "
                "retrain it to get one",
            )
        return Response(content, media_type=media or "text/markdown; charset=utf-8")
