"""The floor the service is measured against: the same server, body read and strict msgspec decode, no model.

It answers a constant :class:`PredictResponse`, so the difference between it and the service is exactly what
prediction (encoding, model runtime, label, metrics) costs per request.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, post

from service.schemas import RECORD_DECODER, PredictResponse

_CONSTANT = PredictResponse(probability=0.5, label=1, threshold=0.5, model_version="floor")


@post("/v1/predict", status_code=200)
async def constant_predict(request: Request[Any, Any, Any]) -> PredictResponse:
    RECORD_DECODER.decode(await request.body())
    return _CONSTANT


def create_floor_app() -> Litestar:
    return Litestar(route_handlers=[constant_predict], debug=False)
