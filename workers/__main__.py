"""`python -m workers` / `changeflow-worker`: serve every task queue until SIGTERM or Ctrl-C."""

import argparse

from infra.entry_points import run_entry_point
from workers import worker


def main() -> None:
    # No options: a worker is configured by environment variables only (see the README).
    argparse.ArgumentParser(
        prog="changeflow-worker",
        description="Serve changeflow's workflows and activities on the configured task queues "
        "(CHANGEFLOW_TASK_QUEUE, CHANGEFLOW_DEPLOY_TASK_QUEUE) until SIGTERM or Ctrl-C. "
        "Configured by environment variables: DATABASE_URL, TEMPORAL_ADDRESS, "
        "TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, CHANGEFLOW_*. Without DATABASE_URL or "
        "TEMPORAL_ADDRESS it starts (or joins) the embedded PostgreSQL or Temporal dev server.",
    ).parse_args()
    run_entry_point(worker.main, prog="changeflow-worker")


if __name__ == "__main__":
    main()
