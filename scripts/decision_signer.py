"""The development signer (infra/decision_signer.py) from a shell: tokens for the `temporal`
CLI recipes and `changeflow ... --token`, and the JWKS the workers trust.

    python -m scripts.decision_signer issue --user <id> --tenant <id> --request <id> \\
        --action approve --plan-hash <hash>          # prints one token
    python -m scripts.decision_signer jwks           # prints the path of the JWKS it wrote
"""

import argparse
import uuid

from infra.decision_signer import DEFAULT_LIFETIME_SECONDS, DevelopmentSigner
from infra.settings import load_settings
from workflows.contracts.decisions import DecisionAction


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m scripts.decision_signer")
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="print a signed decision token")
    issue.add_argument("--user", type=uuid.UUID, required=True)
    issue.add_argument("--tenant", type=uuid.UUID, required=True)
    issue.add_argument(
        "--request",
        type=uuid.UUID,
        required=True,
        help="the prompt request id (for a rollback: the target deployment id)",
    )
    issue.add_argument("--action", choices=[a.value for a in DecisionAction], required=True)
    issue.add_argument("--plan-hash", help="the plan's content hash (approve, reject)")
    issue.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME_SECONDS)
    commands.add_parser("jwks", help="write the JWKS and print its path")
    args = parser.parse_args(argv)
    signer = DevelopmentSigner.for_data_dir(
        settings.data_dir, issuer=settings.decision_issuer, audience=settings.decision_audience
    )
    if args.command == "jwks":
        print(signer.jwks_path)
        return 0
    print(
        signer.issue(
            user=args.user,
            tenant=args.tenant,
            request=args.request,
            action=args.action,
            plan_hash=args.plan_hash,
            lifetime_seconds=args.lifetime,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
