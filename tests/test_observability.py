"""Product metrics beside the SDK's, traces over OTLP to a local receiver, and the alert rules and
dashboard in ops/ held to the metrics the code exports."""

import asyncio
import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from temporalio.client import Client

from client.connection import connect, runtime_for
from client.lifecycle import LifecycleClient
from infra.metric_names import (
    HISTOGRAMS,
    LEDGER_ACCOUNTS_DRIFTING,
    LIFECYCLE_OLDEST_AGE,
    LIFECYCLES_OPEN,
    PRODUCT_METRICS,
)
from infra.settings import Settings
from infra.tracing import tracing_configured
from models import ApprovalPolicy, RiskLevel
from models.db import SessionFactory
from scripts.sample_repo import FAILS_IN_PRODUCTION_PROMPT, SAFE_PROMPT
from tests.lifecycle_support import human_policy, make_shop, plan_awaiting_approval, submit
from tests.process_support import free_port
from workers.metrics import sample_ledger_drift, sample_open_lifecycles
from workers.registry import Dependencies
from workers.worker import build_workers, run_until_stopped
from workflows.contracts.lifecycle import PromptRequestResult

ROOT = Path(__file__).resolve().parent.parent
RULES = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())
DASHBOARD = json.loads((ROOT / "ops" / "grafana" / "dashboards" / "changeflow.json").read_text())
# SDK metrics the rules use that exist only once something went wrong (a failed task, a poll
# error) or a long poll came back empty (after a minute idle): a short healthy run has none.
SDK_NOT_IN_A_SHORT_RUN = {
    "temporal_workflow_task_execution_failed",
    "temporal_long_request_failure",
    "temporal_workflow_task_queue_poll_empty",
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if line and not line.startswith("#") and (match := _SAMPLE.match(line)):
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def _settings(client: Client, task_queue: str, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        temporal_address=client.service_client.config.target_host,
        temporal_namespace=client.namespace,
        task_queue=task_queue,
        deploy_task_queue=f"{task_queue}-deploy",
        workspace_dir=tmp_path / "workspaces",
        **extra,
    )


async def _serving(client: Client, sessions: SessionFactory, settings: Settings) -> Any:
    stop = asyncio.Event()
    deps = Dependencies(settings=settings, sessions=sessions, client=client)
    task = asyncio.create_task(run_until_stopped(build_workers(client, deps), stop))
    return stop, task


async def _approved_by_both(
    lifecycle: LifecycleClient, shop: Any, prompt: str
) -> PromptRequestResult:
    request_id = await submit(lifecycle, shop, prompt)
    _, plan = await plan_awaiting_approval(lifecycle, request_id)
    for admin in shop.admins:
        await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)
    async with asyncio.timeout(120):
        return await lifecycle.wait_for_outcome(request_id)


async def test_the_worker_exports_product_metrics_beside_the_sdks(
    temporal_env: Any, sessions: SessionFactory, task_queue: str, tmp_path: Path
) -> None:
    port = free_port()
    settings = _settings(temporal_env.client, task_queue, tmp_path, metrics_port=port)
    client = await connect(settings)
    lifecycle = LifecycleClient(
        client, task_queue=settings.task_queue, deploy_task_queue=settings.deploy_task_queue
    )
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    stop, serving = await _serving(client, sessions, settings)
    try:
        shipped = await _approved_by_both(lifecycle, shop, SAFE_PROMPT)
        undone = await _approved_by_both(lifecycle, shop, FAILS_IN_PRODUCTION_PROMPT)
        waiting = await submit(lifecycle, shop, "set theme to light")
        await plan_awaiting_approval(lifecycle, waiting)
        meter = runtime_for(settings).metric_meter
        await sample_open_lifecycles(sessions, meter)
        await sample_ledger_drift(sessions, meter)
        samples = await asyncio.to_thread(scrape, port)
    finally:
        stop.set()
        await serving
    assert (shipped.status.value, undone.status.value) == ("completed", "rolled_back")

    ended = "changeflow_lifecycles_ended"
    assert total(samples, ended, outcome="completed", risk_level="low") == 1
    assert total(samples, ended, outcome="rolled_back") == 1
    # Each lifecycle waited for people once, and was decided once its second approval came.
    assert total(samples, "changeflow_approval_wait_seconds_count", decision="approve") == 2
    assert total(samples, "changeflow_approval_wait_seconds_sum") > 0
    assert total(samples, "changeflow_tokens_charged", kind="settlement") == (
        shipped.tokens_settled + undone.tokens_settled
    )
    deployments = "changeflow_deployments_ended"
    assert total(samples, deployments, environment="staging", status="succeeded") == 2
    assert total(samples, deployments, environment="production", status="succeeded") == 1
    assert total(samples, deployments, environment="production", status="failed") == 1
    rollbacks = "changeflow_rollbacks_ended"
    assert total(samples, rollbacks, environment="production", trigger="automatic") == 1
    verified = "changeflow_verification_seconds_count"
    assert total(samples, verified, environment="staging", outcome="passed") == 2
    assert total(samples, verified, environment="production", outcome="failed") == 1
    assert total(samples, LIFECYCLES_OPEN, status="awaiting_approval") == 1
    assert total(samples, LIFECYCLES_OPEN, status="planning") == 0
    assert total(samples, LIFECYCLE_OLDEST_AGE, status="awaiting_approval") > 0
    assert total(samples, LEDGER_ACCOUNTS_DRIFTING) == 0
    # No tenant id is ever a label.
    product = [s for s in samples if s[0].startswith("changeflow_")]
    assert product and not any("tenant" in "".join(labels) for _, labels, _ in product)

    # Every metric the alert rules and the dashboard use is one this worker exports.
    exported = {name for name, _, _ in samples}
    used = rule_metrics() | dashboard_metrics()
    assert used - exported - SDK_NOT_IN_A_SHORT_RUN == set()


# --- traces -------------------------------------------------------------------------------


class OtlpReceiver(BaseHTTPRequestHandler):
    """The OTLP/HTTP trace endpoint: protobuf ExportTraceServiceRequest bodies on /v1/traces."""

    spans: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert (
            self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
        )
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OtlpReceiver)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_a_lifecycle_is_one_trace_from_the_client_through_workflows_and_activities(
    temporal_env: Any,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    otlp_receiver: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    settings = _settings(temporal_env.client, task_queue, tmp_path)
    client = await connect(settings)
    assert [type(i).__name__ for i in client.config()["interceptors"]] == ["TracingInterceptor"]
    lifecycle = LifecycleClient(
        client, task_queue=settings.task_queue, deploy_task_queue=settings.deploy_task_queue
    )
    policy = ApprovalPolicy(tenant_id=uuid.uuid4(), auto_approve_max_risk=RiskLevel.CRITICAL)
    shop = await make_shop(sessions, tmp_path, policy=policy)
    stop, serving = await _serving(client, sessions, settings)
    try:
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        async with asyncio.timeout(120):
            result = await lifecycle.wait_for_outcome(request_id)
    finally:
        stop.set()
        await serving
    assert result.status.value == "completed"
    from infra.tracing import flush_traces

    flush_traces()
    spans = {span.name: span for span in OtlpReceiver.spans}
    for name in (
        "StartWorkflow:PromptRequestWorkflow",
        "RunWorkflow:PromptRequestWorkflow",
        "RunActivity:plan_request",
        "StartChildWorkflow:DeploymentWorkflow",
        "RunWorkflow:DeploymentWorkflow",
        "RunActivity:run_check",
    ):
        assert name in spans, sorted(spans)
    # One trace: the headers Temporal carries link every span to the client's start.
    trace_id = spans["StartWorkflow:PromptRequestWorkflow"].trace_id
    assert spans["RunActivity:run_check"].trace_id == trace_id


def test_tracing_is_off_unless_an_otlp_endpoint_is_configured() -> None:
    assert not tracing_configured({})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not tracing_configured(disabled)


# --- alert rules and dashboard ------------------------------------------------------------

_IDENTIFIER = re.compile(r"[a-zA-Z_:][\w:]*")
# PromQL words that are not metric names.
_PROMQL = {
    "sum", "rate", "irate", "increase", "max", "min", "avg", "count", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless", "histogram_quantile",
    "max_over_time", "min_over_time", "time", "clamp_min", "clamp_max", "vector", "bool",
    "offset", "le", "absent", "topk", "delta", "abs", "label_replace",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, ranges and
    strings that are not PromQL's own words."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    return {
        word
        for word in _IDENTIFIER.findall(bare)
        if word not in _PROMQL and not re.fullmatch(r"\d+[smhdwy]?|e\d+", word)
    }


def known_metrics() -> set[str]:
    product = set(PRODUCT_METRICS)
    for name in HISTOGRAMS:
        product |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return product


def rule_metrics() -> set[str]:
    return {
        name
        for group in RULES["groups"]
        for rule in group["rules"]
        for name in metric_names(rule["expr"])
    }


def dashboard_metrics() -> set[str]:
    return {
        name
        for panel in DASHBOARD["panels"]
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }


def test_every_alert_rule_is_complete_and_uses_only_exported_metrics() -> None:
    alerts = [rule for group in RULES["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    for rule in alerts:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert metric_names(rule["expr"]), rule["alert"]
    # What the issue asks alerts for, each covered by a rule on the metric that shows it.
    by_metric = {name: rule["alert"] for rule in alerts for name in metric_names(rule["expr"])}
    for metric in (
        "temporal_workflow_task_schedule_to_start_latency_bucket",
        "temporal_activity_schedule_to_start_latency_bucket",
        "temporal_workflow_task_execution_failed",
        "temporal_long_request_failure",
        LEDGER_ACCOUNTS_DRIFTING,
        LIFECYCLE_OLDEST_AGE,
    ):
        assert metric in by_metric, metric
    # Each rule has promtool unit tests (`make check-alerts`, run by CI) that make it fire.
    unit_tests = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.test.yml").read_text())
    firing = {
        case["alertname"]
        for test in unit_tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == set(names)
    assert "make check-alerts" in (ROOT / ".ci" / "run").read_text()
    # Product metrics are spelled as the code defines them.
    product = {name for name in rule_metrics() | dashboard_metrics() if "changeflow" in name}
    assert product <= known_metrics()


def test_the_dashboard_is_grafana_json_whose_panels_query_prometheus() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 30
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    queried = [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]
    assert len(queried) >= 8
    for panel in queried:
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    covered = dashboard_metrics()
    for name in PRODUCT_METRICS:
        assert any(metric.startswith(name) for metric in covered), name


def test_compose_runs_prometheus_and_grafana_provisioned_from_ops() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounts = " ".join(prometheus["volumes"] + grafana["volumes"])
    assert "./ops/prometheus/prometheus.yml" in mounts
    assert "./ops/prometheus/alerts.yml" in mounts
    assert "./ops/grafana/provisioning" in mounts and "./ops/grafana/dashboards" in mounts
    scrape_config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in scrape_config["rule_files"]
    (job,) = [j for j in scrape_config["scrape_configs"] if j["job_name"] == "changeflow-worker"]
    # Every worker replica, found by the compose service name, on the port the worker serves.
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    port = services["worker"]["environment"]["CHANGEFLOW_METRICS_PORT"]
    assert job["dns_sd_configs"][0]["port"] == int(port)
