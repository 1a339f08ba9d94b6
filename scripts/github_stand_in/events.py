"""Webhook payloads of the events the stand-in sends (push, delete, pull_request, check_run,
check_suite, status, deployment, deployment_status): GitHub's shapes, minimal but faithful,
built at the moment the event happens (the state changes afterwards)."""

from typing import Any

from scripts.github_stand_in.bare_repo import ZERO_SHA
from scripts.github_stand_in.records import Repository
from scripts.github_stand_in.shapes import Shapes, iso, node_id
from scripts.github_stand_in.state import GitHubState


class EventPayloads:
    def __init__(self, state: GitHubState, shapes: Shapes) -> None:
        self.state = state
        self.shapes = shapes

    def build(self, event: str, full_name: str, raw: dict[str, Any]) -> dict[str, Any]:
        repository = self.state.repositories[full_name]
        sender = raw.pop("_sender", None)
        body = getattr(self, f"_{event}")(repository, raw)
        body["repository"] = self.shapes.repository(repository)
        body["sender"] = self.shapes.user(
            sender or body.pop("_sender_login", None) or repository.owner
        )
        body.pop("_sender_login", None)
        installation = self._installation(full_name)
        if installation is not None:
            body["installation"] = {
                "id": installation,
                "node_id": node_id("Installation", installation),
            }
        return body

    def _installation(self, full_name: str) -> int | None:
        for installation in self.state.installations.values():
            if full_name in installation.repositories:
                return installation.id
        return None

    def _push(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        bare = repository.bare
        before, after = raw["before"], raw["after"]
        commits: list[dict[str, Any]] = []
        if after != ZERO_SHA:
            span = after if before == ZERO_SHA else f"{before}..{after}"
            shas = bare.git("rev-list", "--reverse", "--max-count=20", span).split()
            commits = [self._commit(repository, sha) for sha in shas]
        html = f"{self.shapes.base}/{repository.full_name}"
        return {
            "ref": raw["ref"],
            "before": before,
            "after": after,
            "created": raw["created"],
            "deleted": raw["deleted"],
            "forced": raw["forced"],
            "base_ref": None,
            "compare": f"{html}/compare/{before[:12]}...{after[:12]}",
            "commits": commits,
            "head_commit": commits[-1] if commits else None,
            "pusher": {"name": raw["pusher_login"], "email": None},
        }

    def _delete(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        return {"ref": raw["ref"], "ref_type": raw["ref_type"], "pusher_type": raw["pusher_type"]}

    def _commit(self, repository: Repository, sha: str) -> dict[str, Any]:
        facts = repository.bare.commit_facts(sha)
        return {
            "id": sha,
            "tree_id": repository.bare.git("rev-parse", f"{sha}^{{tree}}"),
            "distinct": True,
            "message": facts["message"],
            "timestamp": facts["timestamp"],
            "url": f"{self.shapes.base}/{repository.full_name}/commit/{sha}",
            "author": {"name": facts["author_name"], "email": facts["author_email"]},
            "committer": {"name": facts["committer_name"], "email": facts["committer_email"]},
            "added": [],
            "removed": [],
            "modified": [],
        }

    def _pull_request(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        body = {
            "action": raw["action"],
            "number": raw["number"],
            "pull_request": self.shapes.pull(raw["pull_request"]),
        }
        if "before" in raw:
            body |= {"before": raw["before"], "after": raw["after"]}
        return body

    def _check_run(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        run = raw["check_run"]
        shape = self.shapes.check_run(run)
        suite = self.state.check_suites[(run.repository, run.head_sha)]
        shape["check_suite"] = self.shapes.check_suite(suite)
        return {"action": raw["action"], "check_run": shape, "_sender_login": "github-actions[bot]"}

    def _check_suite(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        return {
            "action": raw["action"],
            "check_suite": self.shapes.check_suite(raw["check_suite"]),
            "_sender_login": "github-actions[bot]",
        }

    def _status(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        status = raw["status"]
        bare = repository.bare
        branches = [
            {
                "name": ref.removeprefix("refs/heads/"),
                "commit": {
                    "sha": sha,
                    "url": f"{self.shapes.base}/repos/{repository.full_name}/commits/{sha}",
                },
                "protected": ref.removeprefix("refs/heads/") in repository.protections,
            }
            for ref, sha in bare.refs().items()
            if ref.startswith("refs/heads/") and sha == status.sha
        ]
        return {
            "id": status.id,
            "sha": status.sha,
            "name": repository.full_name,
            "target_url": status.target_url,
            "avatar_url": None,
            "context": status.context,
            "description": status.description,
            "state": status.state,
            "commit": self._status_commit(repository, status.sha),
            "branches": branches,
            "created_at": iso(status.created_at),
            "updated_at": iso(status.updated_at),
            "_sender_login": status.creator,
        }

    def _status_commit(self, repository: Repository, sha: str) -> dict[str, Any]:
        bare = repository.bare
        facts = bare.commit_facts(sha)
        api = f"{self.shapes.base}/repos/{repository.full_name}"
        html = f"{self.shapes.base}/{repository.full_name}"
        tree = bare.git("rev-parse", f"{sha}^{{tree}}")
        parents = bare.git("log", "-1", "--format=%P", sha).split()
        return {
            "sha": sha,
            "node_id": node_id("Commit", int(sha[:7], 16)),
            "url": f"{api}/commits/{sha}",
            "html_url": f"{html}/commit/{sha}",
            "comments_url": f"{api}/commits/{sha}/comments",
            "author": None,
            "committer": None,
            "parents": [
                {"sha": p, "url": f"{api}/commits/{p}", "html_url": f"{html}/commit/{p}"}
                for p in parents
            ],
            "commit": {
                "message": facts["message"],
                "author": {
                    "name": facts["author_name"],
                    "email": facts["author_email"],
                    "date": facts["timestamp"],
                },
                "committer": {
                    "name": facts["committer_name"],
                    "email": facts["committer_email"],
                    "date": facts["timestamp"],
                },
                "comment_count": 0,
                "tree": {"sha": tree, "url": f"{api}/git/trees/{tree}"},
                "url": f"{api}/git/commits/{sha}",
                "verification": {
                    "verified": False,
                    "reason": "unsigned",
                    "signature": None,
                    "payload": None,
                    "verified_at": None,
                },
            },
        }

    def _deployment(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        deployment = raw["deployment"]
        return {
            "action": raw["action"],
            "deployment": self.shapes.deployment(deployment),
            "workflow": None,
            "workflow_run": None,
            "_sender_login": deployment.creator,
        }

    def _deployment_status(self, repository: Repository, raw: dict[str, Any]) -> dict[str, Any]:
        deployment, status = raw["deployment"], raw["deployment_status"]
        return {
            "action": raw["action"],
            "deployment_status": self.shapes.deployment_status(deployment, status),
            "deployment": self.shapes.deployment(deployment),
            "check_run": None,
            "workflow": None,
            "workflow_run": None,
            "_sender_login": status.creator,
        }
