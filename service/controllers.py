"""Thin HTTP controllers: decode, check scope, ask the served model, encode.

Request bodies are decoded by the strict, reused decoders of :mod:`service.schemas` (not by Litestar's
lenient ``data`` conversion), so ``"3"`` is not an integer here; their OpenAPI request bodies are declared
from the same Structs. Patient data never reaches a log line: errors name fields and rules, never values.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter
from typing import Any

import anyio
import msgspec
import numpy as np
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_408_REQUEST_TIMEOUT,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from healthpredict.fast_inference.base import usable_cores
from healthpredict.features import EXCLUDED_DISCHARGE_IDS, is_out_of_scope
from healthpredict.settings import Settings
from service.limits import BODY_SCOPE_KEY
from service.metrics import WARMUP_SCOPE_KEY, ServiceMetrics
from service.model_manager import ModelManager, ReloadInProgress, ServedModel, describe
from service.schemas import (
    BATCH_DECODER,
    RECORD_DECODER,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FieldError,
    HealthStatus,
    ModelDescription,
    PatientRecord,
    Prediction,
    PredictResponse,
    ReloadResult,
    request_body_schema,
)

_DISCHARGE = attrgetter("discharge_disposition_id")
# Batches larger than this are predicted in a worker thread so the event loop keeps answering health checks.
THREAD_OFFLOAD_ROWS = 512
# Request bodies larger than this are decoded in a worker thread for the same reason.
THREAD_DECODE_BYTES = 256 * 1024
_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_NAME = re.compile(r"field `(?P<field>[^`]+)`")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<field>.*)`$", re.DOTALL)


class RequestRejected(HTTPException):
    """A 4xx/503 whose body is an :class:`ErrorResponse` naming the offending fields."""

    def __init__(self, status_code: int, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail=detail, status_code=status_code)
        self.errors = errors or []


#: The longest piece of a submitted name an error repeats (an unknown field's name can be any length).
SHOWN_NAME_CHARS = 32


def _shown(name: str) -> str:
    return name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "…"


def field_error(exc: msgspec.ValidationError) -> FieldError:
    """``Expected `int` >= 1 - at `$.time_in_hospital``` → field ``time_in_hospital`` and its rule.

    The rule never repeats the submitted value: a value outside a vocabulary is reported as such (the
    vocabulary is in the schema), and an unknown field's name is cut to :data:`SHOWN_NAME_CHARS` characters.
    """
    match = _AT_PATH.match(str(exc))
    message = str(exc) if match is None else match.group("message")
    path = None if match is None else match.group("path")
    if message.startswith("Invalid enum value"):
        message = "not one of the allowed values (the request schema lists them)"
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown is not None:
        name = _shown(unknown.group("field"))
        path = f"{path}.{name}" if path else name
        message = "unknown field: not part of the request schema"
    else:
        named = _FIELD_NAME.search(message)
        if named is not None:  # a missing field: the name comes from the schema, the path is its parent
            path = f"{path}.{named.group('field')}" if path else named.group("field")
    return FieldError(field=_shown(path) if path else None, message=message[:200])


def decode(decoder: msgspec.json.Decoder[Any], body: bytes | bytearray) -> Any:
    """Strict decoding; every failure, for any bytes, is a 400 or 422 that names the field and the rule."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        error = field_error(exc)
        where = f" (field {error.field!r})" if error.field else ""
        raise RequestRejected(
            HTTP_422_UNPROCESSABLE_ENTITY, f"invalid request{where}: {error.message}", [error]
        ) from None
    except msgspec.DecodeError as exc:
        raise RequestRejected(HTTP_400_BAD_REQUEST, f"request body is not valid JSON: {str(exc)[:200]}") from None
    except UnicodeDecodeError as exc:  # invalid or overlong UTF-8 inside a string
        raise RequestRejected(
            HTTP_400_BAD_REQUEST, f"request body is not valid UTF-8 JSON: {exc.reason} at byte {exc.start}"
        ) from None


def out_of_scope_error(prefix: str) -> FieldError:
    codes = ", ".join(str(c) for c in sorted(EXCLUDED_DISCHARGE_IDS))
    return FieldError(
        field=f"{prefix}discharge_disposition_id",
        message=f"discharge to hospice or death (codes {codes}) is outside the model's scope: "
        "readmission is undefined for this encounter",
    )


#: The only request body media type; ``charset`` is its only parameter, and UTF-8 (JSON's encoding) its only value.
JSON_MEDIA_TYPE = "application/json"
_UTF8 = ("utf-8", "utf8")


def require_json(request: Request[Any, Any, Any]) -> None:
    """A body that does not say it is UTF-8 JSON is a 415 naming the header, before the body is decoded."""
    declared = request.headers.get("content-type")
    rule = f"must be {JSON_MEDIA_TYPE} (optionally with charset=utf-8)"
    if declared is None:
        problem = "Content-Type header is missing"
    else:
        media_type, *parameters = declared.split(";")
        charsets = [p.partition("=") for p in parameters if p.strip()]
        if media_type.strip().lower() != JSON_MEDIA_TYPE:
            problem = "Content-Type is not application/json"
        elif any(n.strip().lower() != "charset" or v.strip().strip('"').lower() not in _UTF8 for n, _, v in charsets):
            problem = "Content-Type has a parameter other than charset=utf-8"
        else:
            return
    raise RequestRejected(
        HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{problem}: the body {rule}", [FieldError(field="Content-Type", message=rule)]
    )


async def request_body(request: Request[Any, Any, Any]) -> bytes | bytearray:
    """The body :mod:`service.limits` read, taken out of the scope (freed once decoded), or read here."""
    body: bytes | bytearray | None = request.scope.pop(BODY_SCOPE_KEY, None)  # type: ignore[misc]
    return await request.body() if body is None else body


async def read_record(request: Request[Any, Any, Any]) -> PatientRecord:
    """One encounter's body, strictly decoded; an encounter outside the model's scope is a 422."""
    require_json(request)
    record: PatientRecord = decode(RECORD_DECODER, await request_body(request))
    if is_out_of_scope(record.discharge_disposition_id):
        error = out_of_scope_error("")
        raise RequestRejected(HTTP_422_UNPROCESSABLE_ENTITY, error.message, [error])
    return record


async def read_batch(
    request: Request[Any, Any, Any], limit: int, variable: str, limit_name: str = "the limit"
) -> list[PatientRecord]:
    """A batch body, strictly decoded (off the event loop when large): more than ``limit`` records (the setting
    ``variable``) is a 413, any encounter outside the model's scope a 422 naming the first 20."""
    require_json(request)
    body = await request_body(request)
    if len(body) > THREAD_DECODE_BYTES:  # a large body is decoded off the event loop
        batch = await anyio.to_thread.run_sync(decode, BATCH_DECODER, body)
    else:
        batch = decode(BATCH_DECODER, body)
    records: list[PatientRecord] = batch.records
    if len(records) > limit:
        raise RequestRejected(
            HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            f"batch has {len(records)} records; {limit_name} is {limit} ({variable})",
            [FieldError(field="records", message=f"at most {limit} records")],
        )
    outside = list(compress(range(len(records)), map(is_out_of_scope, map(_DISCHARGE, records))))
    if outside:
        errors = [out_of_scope_error(f"records[{i}].") for i in outside[:20]]
        raise RequestRejected(
            HTTP_422_UNPROCESSABLE_ENTITY,
            f"{len(outside)} record(s) are outside the model's scope (discharge to hospice or death), "
            f"first at records[{outside[0]}]",
            errors,
        )
    return records


@dataclass(frozen=True)
class ServiceState:
    settings: Settings
    manager: ModelManager
    metrics: ServiceMetrics
    warm: threading.Event = field(default_factory=threading.Event)  # the request path has run: ready may say yes
    #: Worker threads for single-record TreeSHAP explanations: one per usable core.
    explain_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(usable_cores()))


def service_state(request: Request[Any, Any, Any]) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def serving(state: ServiceState) -> ServedModel:
    served = state.manager.current
    if served is None:
        raise RequestRejected(HTTP_503_SERVICE_UNAVAILABLE, f"no model loaded yet from {state.manager.uri}")
    return served


def _body_operation(struct: Any) -> type[Operation]:
    """An OpenAPI operation whose JSON request body is the schema of ``struct``, the type its decoder enforces."""
    schema: Any = request_body_schema(struct)

    @dataclass
    class WithRequestBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema)})

    return WithRequestBody


_ERRORS = {
    HTTP_400_BAD_REQUEST: ResponseSpec(
        ErrorResponse, description="Body is not UTF-8 JSON, or Content-Length is malformed", generate_examples=False
    ),
    HTTP_408_REQUEST_TIMEOUT: ResponseSpec(
        ErrorResponse, description="The body did not arrive in time (the connection closes)", generate_examples=False
    ),
    HTTP_413_REQUEST_ENTITY_TOO_LARGE: ResponseSpec(
        ErrorResponse, description="Body or batch over its limit", generate_examples=False
    ),
    HTTP_415_UNSUPPORTED_MEDIA_TYPE: ResponseSpec(
        ErrorResponse, description="Content-Type is not application/json", generate_examples=False
    ),
    HTTP_422_UNPROCESSABLE_ENTITY: ResponseSpec(
        ErrorResponse, description="A field breaks its rule, or the encounter is out of scope", generate_examples=False
    ),
    HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(
        ErrorResponse,
        description="No model loaded yet, or the service is at its limit of requests in progress (see Retry-After)",
        generate_examples=False,
    ),
}


class PredictionController(Controller):
    path = "/v1"
    tags = ("predictions",)

    @post(
        "/predict",
        status_code=HTTP_200_OK,
        operation_class=_body_operation(PatientRecord),
        responses=_ERRORS,
        summary="Readmission probability of one encounter",
    )
    async def predict(self, request: Request[Any, Any, Any]) -> PredictResponse:
        state = service_state(request)
        record = await read_record(request)
        served = serving(state)
        probability = float(served.predict_rows([msgspec.structs.astuple(record)])[0])
        label = int(probability >= served.threshold)
        if WARMUP_SCOPE_KEY not in request.scope:
            state.metrics.count_labels(label, 1)
            state.metrics.scores.observe(probability)
        return PredictResponse(
            probability=probability, label=label, threshold=served.threshold, model_version=served.version
        )

    @post(
        "/predict/batch",
        status_code=HTTP_200_OK,
        operation_class=_body_operation(BatchRequest),
        responses=_ERRORS,
        summary="Readmission probabilities of many encounters (all-or-nothing validation)",
    )
    async def predict_batch(self, request: Request[Any, Any, Any]) -> BatchResponse:
        state = service_state(request)
        records = await read_batch(request, state.settings.service.max_batch_records, "HEALTHPREDICT_MAX_BATCH_RECORDS")
        served = serving(state)
        # Records become row tuples inside the predictor, chunk by chunk (overlapping the previous chunk's trees).
        if len(records) > THREAD_OFFLOAD_ROWS:
            probabilities = await anyio.to_thread.run_sync(served.predict_rows, records, msgspec.structs.astuple)
        else:
            probabilities = served.predict_rows(records, msgspec.structs.astuple)
        labels = (probabilities >= served.threshold).astype(np.int64).tolist()
        if WARMUP_SCOPE_KEY not in request.scope:
            state.metrics.count_labels(sum(labels), len(labels))
            state.metrics.scores.observe_many(probabilities)
        predictions = list(map(Prediction, probabilities.tolist(), labels))
        return BatchResponse(predictions=predictions, model_version=served.version)

    @get("/model", summary="The served model, its metrics, and the last reload error")
    async def model(self, request: Request[Any, Any, Any]) -> ModelDescription:
        return msgspec.convert(describe(service_state(request).manager), ModelDescription)


class HealthController(Controller):
    path = "/health"
    tags = ("health",)

    @get("/live", summary="The process answers")
    async def live(self) -> HealthStatus:
        return HealthStatus(status="live")

    @get(
        "/ready",
        summary="A model is loaded and warmed up (503 until then)",
        responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(HealthStatus, description="Not ready")},
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Response[HealthStatus]:
        state = service_state(request)
        served = state.manager.current
        if served is None or not state.warm.is_set():
            return Response(HealthStatus(status="not ready"), status_code=HTTP_503_SERVICE_UNAVAILABLE)
        return Response(HealthStatus(status="ready", model_version=served.version))


@get("/metrics", media_type="text/plain; version=0.0.4; charset=utf-8", include_in_schema=True, tags=["metrics"])
async def metrics_endpoint(request: Request[Any, Any, Any]) -> bytes:
    return service_state(request).metrics.exposition()


class AdminController(Controller):
    path = "/admin"
    tags = ("admin",)

    @post(
        "/reload",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        summary="Reload the model the URI names now (Authorization: Bearer HEALTHPREDICT_RELOAD_TOKEN)",
        responses={
            HTTP_401_UNAUTHORIZED: ResponseSpec(ErrorResponse, description="No bearer token", generate_examples=False),
            HTTP_403_FORBIDDEN: ResponseSpec(ErrorResponse, description="Wrong token", generate_examples=False),
            HTTP_404_NOT_FOUND: ResponseSpec(ErrorResponse, description="Reload disabled", generate_examples=False),
            HTTP_409_CONFLICT: ResponseSpec(
                ErrorResponse, description="Another reload is in progress", generate_examples=False
            ),
        },
    )
    def reload(self, request: Request[Any, Any, Any]) -> Response[ReloadResult]:
        import hmac

        state = service_state(request)
        token = state.settings.service.reload_token
        if not token:
            raise RequestRejected(HTTP_404_NOT_FOUND, "reload disabled: HEALTHPREDICT_RELOAD_TOKEN is not set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise RequestRejected(HTTP_401_UNAUTHORIZED, "missing bearer token")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestRejected(HTTP_403_FORBIDDEN, "wrong reload token")
        before = state.manager.current
        try:
            served = state.manager.reload()
        except ReloadInProgress as exc:
            raise RequestRejected(HTTP_409_CONFLICT, str(exc)) from None
        except Exception as exc:
            version = None if before is None else before.version
            detail = f"reload failed, still serving {version or 'nothing'}: {type(exc).__name__}: {exc}"
            return Response(
                ReloadResult(reloaded=False, version=version, detail=detail[:2000]),
                status_code=HTTP_503_SERVICE_UNAVAILABLE if before is None else 502,
            )
        changed = before is None or before.version != served.version
        detail = f"serving version {served.version}" + ("" if changed else " (unchanged)")
        return Response(ReloadResult(reloaded=True, version=served.version, detail=detail), status_code=HTTP_200_OK)


def _parameter_error(error: dict[str, Any]) -> FieldError:
    """Litestar's error for one parameter, its name cut and its rule stated without the submitted value."""
    message = str(error.get("message", "invalid value"))
    if message.startswith("Invalid enum value"):
        message = "not one of the allowed values (the schema lists them)"
    elif "'" in message or '"' in message:  # a message that quotes what was sent
        message = "invalid value (the schema states the rule)"
    key = error.get("key")
    return FieldError(field=_shown(str(key)) if key is not None else None, message=message[:200])


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    """Every error body has one shape; unexpected errors say nothing about the request's data."""
    if isinstance(exc, RequestRejected):
        return Response(
            ErrorResponse(status_code=exc.status_code, detail=exc.detail, errors=exc.errors),
            status_code=exc.status_code,
        )
    if isinstance(exc, ValidationException):  # a query or path parameter: Litestar's detail repeats the URL
        errors = [_parameter_error(e) for e in exc.extra if isinstance(e, dict)] if isinstance(exc.extra, list) else []
        named = ", ".join(sorted({e.field for e in errors if e.field}))
        detail = f"invalid request parameter: {named}" if named else "invalid request parameters"
        return Response(
            ErrorResponse(status_code=exc.status_code, detail=detail, errors=errors), status_code=exc.status_code
        )
    if isinstance(exc, HTTPException):
        return Response(
            ErrorResponse(status_code=exc.status_code, detail=exc.detail[:200]), status_code=exc.status_code
        )
    request.logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return Response(ErrorResponse(status_code=500, detail="internal error"), status_code=500)
