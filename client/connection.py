"""Connecting to Temporal with the settings: address, namespace, API key, TLS, metrics."""

import functools
import logging

import structlog
from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import TLSConfig

from infra.codec import data_converter, warn_about_development_keys
from infra.metric_names import HISTOGRAM_BUCKETS
from infra.settings import ConfigurationError, Settings
from infra.tracing import tracing_interceptors

log = structlog.get_logger(__name__)


def tls_config(settings: Settings) -> TLSConfig | bool:
    paths = (
        settings.temporal_tls_client_cert_path,
        settings.temporal_tls_client_key_path,
        settings.temporal_tls_server_ca_cert_path,
    )
    if not any(paths) and not settings.temporal_tls_server_name:
        # An API key implies TLS (Temporal Cloud); otherwise plain unless asked.
        return settings.temporal_tls or settings.temporal_api_key is not None
    try:
        cert, key, ca = (p.read_bytes() if p else None for p in paths)
    except OSError as exc:
        raise ConfigurationError(f"cannot read a Temporal TLS file: {exc}") from None
    return TLSConfig(
        client_cert=cert,
        client_private_key=key,
        server_root_ca_cert=ca,
        domain=settings.temporal_tls_server_name,
    )


def runtime_for(settings: Settings) -> Runtime:
    """The process's Temporal runtime: Core's logs forwarded into our logging (so they are
    structured and redacted like the rest) and, with a metrics port, a Prometheus endpoint on
    the first free port of CHANGEFLOW_METRICS_PORT's span."""
    return _runtime(settings.metrics_port, settings.metrics_port_span)


@functools.cache
def _runtime(first_port: int | None, span: int) -> Runtime:
    # One per process and port: each runtime owns a thread pool and the port can bind once.
    if not first_port:
        return _new_runtime(None)
    last = min(first_port + span - 1, 65535)
    for port in range(first_port, last + 1):
        try:
            runtime = _new_runtime(port)
        except ValueError as exc:  # the bridge's "Address already in use"
            if port == last:
                taken = f"port {first_port}" if span == 1 else f"ports {first_port}-{last}"
                raise ConfigurationError(
                    f"cannot serve metrics on {taken}: {exc} (several workers on one host "
                    "with one environment: set CHANGEFLOW_METRICS_PORT_SPAN to how many)"
                ) from None
            continue
        log.info("metrics_serving", port=port, path="/metrics")
        return runtime
    raise AssertionError("unreachable: span >= 1")


def _new_runtime(metrics_port: int | None) -> Runtime:
    metrics = (
        PrometheusConfig(
            bind_address=f"0.0.0.0:{metrics_port}",
            # The product metrics' buckets in seconds (workers/metrics.py); the SDK's keep theirs.
            histogram_bucket_overrides=HISTOGRAM_BUCKETS,
        )
        if metrics_port
        else None
    )
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            ),
            metrics=metrics,
        )
    )


async def connect(settings: Settings, *, address: str | None = None) -> Client:
    """A client using the pydantic converter every payload of ours needs, encrypted by the
    payload key ring (infra/codec.py), traced when an OTLP endpoint is configured
    (infra/tracing.py)."""
    target = address or settings.temporal_address
    if target is None:
        raise ConfigurationError("TEMPORAL_ADDRESS is not set and no embedded server is running")
    converter = data_converter(settings)
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    runtime = runtime_for(settings)
    try:
        client = await Client.connect(
            target,
            namespace=settings.temporal_namespace,
            api_key=api_key,
            tls=tls_config(settings),
            data_converter=converter,
            runtime=runtime,
            interceptors=tracing_interceptors(),
        )
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot reach Temporal at {target}: {exc}") from None
    warn_about_development_keys(settings)
    return client
