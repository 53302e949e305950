"""The Litestar application factory (``healthpredict serve`` runs ``create_app`` under uvicorn)."""

from __future__ import annotations

import asyncio
import logging
import os

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from healthpredict.settings import Settings, get_settings, mlflow_client_environment
from service.controllers import (
    AdminController,
    HealthController,
    PredictionController,
    ServiceState,
    error_response,
    metrics_endpoint,
)
from service.explain import ExplainController
from service.limits import RequestLimits
from service.metrics import ServiceMetrics
from service.model_manager import ModelManager
from service.warmup import warm_up

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the service; the model loads in the background after startup (live at once, ready when loaded and
    the request path is warm)."""
    settings = settings or get_settings()
    for name, value in mlflow_client_environment(settings).items():
        os.environ.setdefault(name, value)  # every registry call the service makes gives up in time
    metrics = ServiceMetrics()
    manager = ModelManager(
        settings, on_swap=metrics.set_model, on_failure=metrics.reload_failed, on_alias=metrics.set_alias_mismatch
    )
    state = ServiceState(settings=settings, manager=manager, metrics=metrics)
    limits = RequestLimits(
        max_body_bytes=settings.service.max_body_bytes,
        max_inflight_bytes=settings.service.max_inflight_body_bytes,
        max_concurrent=settings.service.max_concurrent_requests,
        body_timeout_s=settings.service.body_timeout_s,
    )
    tasks: set[asyncio.Task[None]] = set()

    async def start(app: Litestar) -> None:
        manager.start()
        task = asyncio.create_task(warm_up(app, state))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        manager.stop()

    openapi = OpenAPIConfig(
        title="HealthPredict prediction service",
        version="1",
        description="Readmission probability of diabetic inpatient encounters (UCI Diabetes 130-US hospitals).",
        path="/schema",
        render_plugins=[SwaggerRenderPlugin()],
    )
    return Litestar(
        route_handlers=[PredictionController, ExplainController, HealthController, AdminController, metrics_endpoint],
        state=State({"service": state}),
        on_startup=[start],
        on_shutdown=[stop],
        middleware=[metrics.middleware, limits.middleware],
        exception_handlers={HTTPException: error_response, Exception: error_response},
        openapi_config=openapi,
        request_max_body_size=settings.service.max_body_bytes,
        debug=False,
    )
