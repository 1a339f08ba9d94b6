"""Connecting to Temporal with the settings: address, namespace, API key, TLS, metrics."""

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from workers.settings import ConfigurationError, Settings


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


def runtime_for(settings: Settings) -> Runtime | None:
    if settings.metrics_port is None:
        return None
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=f"0.0.0.0:{settings.metrics_port}")
        )
    )


async def connect(settings: Settings, *, address: str | None = None) -> Client:
    """A client using the pydantic converter every payload of ours needs."""
    target = address or settings.temporal_address
    if target is None:
        raise ConfigurationError("TEMPORAL_ADDRESS is not set and no embedded server is running")
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            target,
            namespace=settings.temporal_namespace,
            api_key=api_key,
            tls=tls_config(settings),
            data_converter=pydantic_data_converter,
            runtime=runtime_for(settings),
        )
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot reach Temporal at {target}: {exc}") from None
