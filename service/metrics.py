"""Prometheus metrics in an app-owned registry (two apps in one process never share counters)."""

from __future__ import annotations

import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "healthpredict_http_requests", "HTTP requests by route and status", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "healthpredict_http_request_duration_seconds", "HTTP request latency by route and status",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.predictions = Counter(
            "healthpredict_predictions", "Predictions answered, by predicted label", ["label"], registry=self.registry
        )
        self.model_info = Info("healthpredict_model", "The model being served", registry=self.registry)
        self.model_loaded = Gauge(
            "healthpredict_model_loaded", "1 once a model is loaded and warmed up", registry=self.registry
        )
        self.reload_failures = Counter(
            "healthpredict_model_reload_failures", "Model loads that failed (the old model kept serving)",
            registry=self.registry,
        )  # fmt: skip
        self._label_counters = (self.predictions.labels(label="0"), self.predictions.labels(label="1"))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count_labels(self, positives: int, total: int) -> None:
        if total - positives:
            self._label_counters[0].inc(total - positives)
        if positives:
            self._label_counters[1].inc(positives)

    def set_model(self, served: Any) -> None:
        info = served.info
        self.model_info.info(
            {
                "name": info.name or "",
                "version": served.version,
                "alias": info.alias or "",
                "run_id": info.run_id or "",
                "family": info.family or "",
                "runtime": served.predictor.description,
            }
        )
        self.model_loaded.set(1)

    def reload_failed(self, message: str) -> None:
        self.reload_failures.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            labels = {"route": route, "method": method, "status": str(status)}
            children = (self.requests.labels(**labels), self.latency.labels(**labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware timing each routed request; labels use the route template, never the raw path."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("path_template") or "unmatched"
                self._observe(route, scope["method"], status, time.perf_counter() - start)

        return timed
