"""OpenTelemetry tracing through Temporal's TracingInterceptor: spans for the client's calls
(start, update, query, signal), each workflow run and each activity attempt, linked across
processes by the headers Temporal carries.

On only when an OTLP endpoint is configured with OpenTelemetry's own variables
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_SERVICE_NAME,
OTEL_EXPORTER_OTLP_HEADERS and the rest as the exporter documents them), and off otherwise: no
provider, no interceptor, no cost. OTEL_SDK_DISABLED=true turns it off whatever is set.
"""

import functools
import os
from collections.abc import Mapping

from temporalio.contrib.opentelemetry import TracingInterceptor

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "changeflow-worker"


def tracing_configured(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


@functools.cache
def _install_provider() -> None:
    # Once per process: a second global provider is refused by OpenTelemetry anyway.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    # The exporter reads its endpoint, headers and timeout from the OTEL_ variables.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def tracing_interceptors(env: Mapping[str, str] = os.environ) -> list[TracingInterceptor]:
    """The client interceptors to connect with: also worker interceptors, so a worker built on
    that client traces its workflows and activities too."""
    if not tracing_configured(env):
        return []
    _install_provider()
    return [TracingInterceptor()]


def flush_traces() -> None:
    """Export what is buffered; called on the way out, as os._exit skips atexit handlers."""
    if not _install_provider.cache_info().currsize:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush()
