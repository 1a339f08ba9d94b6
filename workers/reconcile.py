"""`make reconcile` / `changeflow-reconcile`: check every token account against its entries
and holds, print a report per account, exit 1 when anything drifted.

Uses DATABASE_URL, or the embedded PostgreSQL under CHANGEFLOW_DATA_DIR when it is unset.
"""

import argparse
import asyncio
from datetime import timedelta

from activities.reconciliation import AccountReconciliation, reconcile
from infra.entry_points import EXIT_FAILURE, EXIT_OK, run_entry_point
from infra.settings import Settings
from models.db import create_engine, session_factory
from workers.devstack import start_postgres


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="changeflow-reconcile", description=__doc__)
    parser.add_argument(
        "--expiry-grace-seconds",
        type=float,
        default=300,
        help="how long past its expiry an active hold is tolerated (the sweep runs each "
        "minute); default 300",
    )
    parser.add_argument("--quiet", action="store_true", help="print only accounts with drift")
    return parser.parse_args(argv)


def format_report(report: AccountReconciliation) -> list[str]:
    head = (
        f"{'OK   ' if report.clean else 'DRIFT'} account {report.account_id} "
        f"tenant {report.tenant_id} tier {report.plan_tier} balance {report.balance} "
        f"held {report.held} entries {report.entries}"
    )
    return [head, *(f"      - {finding}" for finding in report.drift)]


async def run_reconciliation(
    database_url: str, *, expiry_grace: timedelta, quiet: bool = False
) -> int:
    engine = create_engine(database_url, pool_size=2)
    try:
        reports = await reconcile(session_factory(engine), expiry_grace=expiry_grace)
    finally:
        await engine.dispose()
    drifted = [r for r in reports if not r.clean]
    for report in reports:
        if report.drift or not quiet:
            print("\n".join(format_report(report)))
    print(
        f"reconciled {len(reports)} accounts: "
        + (f"{len(drifted)} with drift" if drifted else "no drift")
    )
    return EXIT_FAILURE if drifted else EXIT_OK


def main() -> None:
    args = _parse()

    async def _main(settings: Settings) -> int:
        grace = timedelta(seconds=args.expiry_grace_seconds)
        if settings.database_url is not None:
            url = settings.database_url.get_secret_value()
            return await run_reconciliation(url, expiry_grace=grace, quiet=args.quiet)
        server, url = await asyncio.to_thread(start_postgres, settings.data_dir)
        try:
            return await run_reconciliation(url, expiry_grace=grace, quiet=args.quiet)
        finally:
            await asyncio.to_thread(server.cleanup)

    run_entry_point(_main, prog="changeflow-reconcile")


if __name__ == "__main__":
    main()
