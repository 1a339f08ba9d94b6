"""`python -m workers` / `changeflow-worker`: serve every task queue until SIGTERM or Ctrl-C."""

from workers import worker
from workers.cli import run_entry_point


def main() -> None:
    run_entry_point(worker.main, prog="changeflow-worker")


if __name__ == "__main__":
    main()
