"""The real server fuzzed from its own OpenAPI schema (schemathesis): no request, valid or not, gets a 5xx, and
every answer's status, content type, headers and body are ones the schema declares for that operation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import schemathesis
from conftest import stop_process
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_service_load import serve

from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.modeling import build_pipeline
from healthpredict.registry import save_pipeline
from service.examples import verification_records

pytestmark = pytest.mark.integration
TOKEN = "fuzz-reload-token"
#: Examples per operation: enough to reach every error path of the service, and the whole run stays near a minute.
EXAMPLES_PER_OPERATION = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    frame = pd.DataFrame(verification_records(200), columns=list(MODEL_INPUT_COLUMNS))
    params = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3, "subsample": 1.0, "colsample_bytree": 1.0,
              "min_child_weight": 1.0, "reg_lambda": 1.0, "reg_alpha": 0.0}  # fmt: skip
    pipeline = build_pipeline("xgboost", params, seed=0).fit(
        frame, (frame["time_in_hospital"] > frame["time_in_hospital"].median()).astype(int)
    )
    folder = tmp_path_factory.mktemp("fuzz-model") / "model"
    save_pipeline(pipeline, folder, frame, {"threshold": 0.5, "family": "xgboost"})
    process, port = serve(folder, tmp_path_factory.mktemp("fuzz-home"), HEALTHPREDICT_RELOAD_TOKEN=TOKEN,
                          HEALTHPREDICT_MODEL_POLL_SECONDS="0")  # fmt: skip
    try:
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/schema/openapi.json")
    finally:
        stop_process(process)


def json_integers(value: Any) -> Any:
    """``value`` with integral floats as integers: JSON Schema counts ``2.0`` as an integer, the service's strict
    decoding does not (a 422 naming the field), so valid cases would otherwise rarely reach the model."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: json_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_integers(v) for v in value]
    return value


def valid_cases(operation: Any) -> Any:
    def with_json_integers(case: Any) -> Any:
        if isinstance(case.body, dict | list):
            case.body = json_integers(case.body)
        return case

    return operation.as_strategy(generation_mode=GenerationMode.POSITIVE).map(with_json_integers)


def test_the_schema_holds_for_generated_requests(api_schema: Any) -> None:
    """Every operation, with requests the schema allows and requests it forbids (bounded, reproducible)."""
    failures: list[str] = []
    began = time.monotonic()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        takes_input = operation.get_request_payload_content_types() or any(True for _ in operation.iter_parameters())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):
            cases = (
                valid_cases(operation)
                if mode is GenerationMode.POSITIVE
                else operation.as_strategy(generation_mode=mode)
            )

            @given(case=cases)
            @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
            def check(case: Any) -> None:
                case.call_and_validate(checks=CHECKS, timeout=30)

            try:
                check()
            except Exception as exc:  # every operation is fuzzed; all failures are reported together
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    print(f"fuzzed {len(operations)} operations in {time.monotonic() - began:.0f} s")
    assert not failures, "\n\n".join(failures)
