"""The Litestar application factory (``healthpredict serve`` runs ``create_app`` under uvicorn)."""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from healthpredict.settings import Settings, get_settings
from service.controllers import (
    AdminController,
    HealthController,
    PredictionController,
    ServiceState,
    error_response,
    metrics_endpoint,
)
from service.metrics import ServiceMetrics
from service.model_manager import ModelManager

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the service; the model loads in the background after startup (live at once, ready when loaded)."""
    settings = settings or get_settings()
    metrics = ServiceMetrics()
    manager = ModelManager(settings, on_swap=metrics.set_model, on_failure=metrics.reload_failed)
    state = ServiceState(settings=settings, manager=manager, metrics=metrics)
    openapi = OpenAPIConfig(
        title="HealthPredict prediction service",
        version="1",
        description="Readmission probability of diabetic inpatient encounters (UCI Diabetes 130-US hospitals).",
        path="/schema",
        render_plugins=[SwaggerRenderPlugin()],
    )
    return Litestar(
        route_handlers=[PredictionController, HealthController, AdminController, metrics_endpoint],
        state=State({"service": state}),
        on_startup=[lambda: manager.start()],
        on_shutdown=[lambda: manager.stop()],
        middleware=[metrics.middleware],
        exception_handlers={HTTPException: error_response, Exception: error_response},
        openapi_config=openapi,
        request_max_body_size=settings.service.max_body_bytes,
        debug=False,
    )
