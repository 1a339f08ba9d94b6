# The changeflow worker image: `changeflow-worker` serving both task queues, configured only by
# environment variables (see docker-compose.yml and the README's configuration table).
FROM python:3.11-slim AS build

WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY activities ./activities
COPY workflows ./workflows
COPY workers ./workers
COPY scripts ./scripts
RUN python -m venv /opt/changeflow \
    && /opt/changeflow/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim

# git: the built-in deploy target releases commits of the projects' repositories.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 changeflow \
    && mkdir -p /var/lib/changeflow \
    && chown changeflow:changeflow /var/lib/changeflow

COPY --from=build /opt/changeflow /opt/changeflow
ENV PATH=/opt/changeflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHANGEFLOW_LOG_FORMAT=json \
    CHANGEFLOW_DATA_DIR=/var/lib/changeflow \
    CHANGEFLOW_WORKSPACE_DIR=/var/lib/changeflow/workspaces

USER changeflow
WORKDIR /var/lib/changeflow
# SIGTERM starts the graceful shutdown: polling stops, in-flight activities get
# CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS to finish (give `docker stop` a longer timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["changeflow-worker"]
