"""A local GitHub for tests and the demo (a stand-in, never part of the product): git over smart
HTTP served by `git http-backend`, GitHub's REST endpoints for apps, refs, pull requests,
checks, statuses and deployments with GitHub's JSON and status codes, rate limits, and a webhook
sender. FACTS.md lists the contract it follows and where each fact comes from; README.md how the
product's GitHub flow should use it."""

from scripts.github_stand_in.records import CheckScript, Protection, StandInClock
from scripts.github_stand_in.server import GitHubStandIn, github_stand_in
from scripts.github_stand_in.webhooks import Delivery, WebhookSender, signature_256

__all__ = [
    "CheckScript",
    "Delivery",
    "GitHubStandIn",
    "Protection",
    "StandInClock",
    "WebhookSender",
    "github_stand_in",
    "signature_256",
]
