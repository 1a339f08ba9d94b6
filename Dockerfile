# The changeflow image: `changeflow-worker` (the entry point) serving both task queues, and
# `changeflow-webhooks`, `changeflow-codec-server` and `changeflow` as other entry points of the
# same image (docker-compose.yml); configured only by environment variables (the README's
# configuration table). Projects' repositories go in /var/lib/changeflow/repositories.
# Dependencies are installed from uv.lock exactly, as `make install` does.
FROM python:3.11-slim AS build

ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/changeflow \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

WORKDIR /src
# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project --python /usr/local/bin/python
# The product's packages only: scripts/ (tools, demos, stand-ins) and tests/ never ship.
COPY models ./models
COPY infra ./infra
COPY activities ./activities
COPY workflows ./workflows
COPY client ./client
COPY workers ./workers
COPY cli ./cli
RUN uv sync --frozen --no-editable --python /usr/local/bin/python

FROM python:3.11-slim

# git: the built-in deploy target releases commits of the projects' repositories.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 changeflow \
    && mkdir -p /var/lib/changeflow/workspaces /var/lib/changeflow/repositories \
    && chown -R changeflow:changeflow /var/lib/changeflow

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
