"""GitHub's JSON shapes for the stand-in's state (components/schemas of GitHub's OpenAPI
description: full-repository, simple-user, git-ref, pull-request, check-run, status,
combined-commit-status, deployment, deployment-status, installation-token, integration).
Fields GitHub marks required are all present; URLs point at the stand-in."""

import hashlib
from base64 import b64encode
from datetime import datetime
from typing import Any

from scripts.github_stand_in.records import (
    GITHUB_ACTIONS_APP,
    AccessToken,
    App,
    CheckRun,
    CheckSuite,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    PullRequest,
    Repository,
)
from scripts.github_stand_in.state import GitHubState

# URL templates every repository object lists (url suffix, template part).
REPOSITORY_URLS = {
    "archive_url": "/{archive_format}{/ref}",
    "assignees_url": "/assignees{/user}",
    "blobs_url": "/git/blobs{/sha}",
    "branches_url": "/branches{/branch}",
    "collaborators_url": "/collaborators{/collaborator}",
    "comments_url": "/comments{/number}",
    "commits_url": "/commits{/sha}",
    "compare_url": "/compare/{base}...{head}",
    "contents_url": "/contents/{+path}",
    "contributors_url": "/contributors",
    "deployments_url": "/deployments",
    "downloads_url": "/downloads",
    "events_url": "/events",
    "forks_url": "/forks",
    "git_commits_url": "/git/commits{/sha}",
    "git_refs_url": "/git/refs{/sha}",
    "git_tags_url": "/git/tags{/sha}",
    "hooks_url": "/hooks",
    "issue_comment_url": "/issues/comments{/number}",
    "issue_events_url": "/issues/events{/number}",
    "issues_url": "/issues{/number}",
    "keys_url": "/keys{/key_id}",
    "labels_url": "/labels{/name}",
    "languages_url": "/languages",
    "merges_url": "/merges",
    "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}",
    "pulls_url": "/pulls{/number}",
    "releases_url": "/releases{/id}",
    "stargazers_url": "/stargazers",
    "statuses_url": "/statuses/{sha}",
    "subscribers_url": "/subscribers",
    "subscription_url": "/subscription",
    "tags_url": "/tags",
    "teams_url": "/teams",
    "trees_url": "/git/trees{/sha}",
}


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def node_id(kind: str, number: int) -> str:
    return b64encode(f"0:{kind}{number}".encode()).decode()


def user_id(login: str) -> int:
    return int(hashlib.sha256(login.encode()).hexdigest()[:7], 16)


class Shapes:
    def __init__(self, state: GitHubState, base_url: str) -> None:
        self.state = state
        self.base = base_url.rstrip("/")

    def user(self, login: str | None) -> dict[str, Any] | None:
        if login is None:
            return None
        api = f"{self.base}/users/{login}"
        return {
            "login": login,
            "id": user_id(login),
            "node_id": node_id("User", user_id(login)),
            "avatar_url": f"{self.base}/avatars/{login}",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.base}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": "Bot" if login.endswith("[bot]") else "User",
            "site_admin": False,
        }

    def repository(self, repository: Repository) -> dict[str, Any]:
        api = f"{self.base}/repos/{repository.full_name}"
        html = f"{self.base}/{repository.full_name}"
        shape: dict[str, Any] = {
            "id": repository.id,
            "node_id": node_id("Repository", repository.id),
            "name": repository.name,
            "full_name": repository.full_name,
            "owner": self.user(repository.owner),
            "private": repository.private,
            "visibility": "private" if repository.private else "public",
            "html_url": html,
            "description": None,
            "fork": False,
            "url": api,
            **{name: api + suffix for name, suffix in REPOSITORY_URLS.items()},
            "git_url": f"git://stand-in/{repository.full_name}.git",
            "ssh_url": f"git@stand-in:{repository.full_name}.git",
            "clone_url": f"{html}.git",
            "svn_url": html,
            "mirror_url": None,
            "homepage": None,
            "language": None,
            "forks": 0,
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers": 0,
            "watchers_count": 0,
            "size": repository.bare.size_kb(),
            "default_branch": repository.default_branch,
            "open_issues": self._open_pulls(repository),
            "open_issues_count": self._open_pulls(repository),
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": False,
            "has_wiki": False,
            "has_pages": False,
            "has_downloads": True,
            "has_discussions": False,
            "archived": False,
            "disabled": False,
            "license": None,
            "pushed_at": iso(repository.pushed_at),
            "created_at": iso(repository.created_at),
            "updated_at": iso(repository.pushed_at),
            "allow_merge_commit": True,
            "allow_squash_merge": True,
            "allow_rebase_merge": False,
            "delete_branch_on_merge": False,
            "network_count": 0,
            "subscribers_count": 0,
        }
        return shape

    def _open_pulls(self, repository: Repository) -> int:
        return sum(
            1
            for p in self.state.pulls.values()
            if p.repository == repository.full_name and p.state == "open"
        )

    def minimal_repository(self, repository: Repository) -> dict[str, Any]:
        full = self.repository(repository)
        keep = (
            "id",
            "node_id",
            "name",
            "full_name",
            "owner",
            "private",
            "html_url",
            "description",
            "fork",
            "url",
            *REPOSITORY_URLS,
            "git_url",
            "ssh_url",
            "clone_url",
            "hooks_url",
        )
        return {name: full[name] for name in keep}

    def ref(self, repository: Repository, ref: str, sha: str) -> dict[str, Any]:
        api = f"{self.base}/repos/{repository.full_name}"
        return {
            "ref": ref,
            "node_id": node_id("Ref", abs(hash((repository.full_name, ref))) % 10**9),
            "url": f"{api}/git/{ref}",
            "object": {"type": "commit", "sha": sha, "url": f"{api}/git/commits/{sha}"},
        }

    def pull(self, pull: PullRequest) -> dict[str, Any]:
        repository = self.state.repositories[pull.repository]
        api = f"{self.base}/repos/{pull.repository}"
        html = f"{self.base}/{pull.repository}/pull/{pull.number}"
        bare = repository.bare
        mergeable = (
            bare.merge_tree(pull.base_sha, pull.head_sha) is not None
            if pull.state == "open"
            else None
        )
        commits = int(bare.git("rev-list", "--count", f"{pull.base_sha}..{pull.head_sha}"))

        def end(branch: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{repository.owner}:{branch}",
                "ref": branch,
                "sha": sha,
                "user": self.user(repository.owner),
                "repo": self.repository(repository),
            }

        return {
            "url": f"{api}/pulls/{pull.number}",
            "id": pull.id,
            "node_id": node_id("PullRequest", pull.id),
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": f"{api}/issues/{pull.number}",
            "commits_url": f"{api}/pulls/{pull.number}/commits",
            "review_comments_url": f"{api}/pulls/{pull.number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{pull.number}/comments",
            "statuses_url": f"{api}/statuses/{pull.head_sha}",
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": self.user(pull.user),
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": iso(pull.created_at),
            "updated_at": iso(pull.updated_at),
            "closed_at": iso(pull.closed_at),
            "merged_at": iso(pull.merged_at),
            "merge_commit_sha": pull.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": end(pull.head_ref, pull.head_sha),
            "base": end(pull.base_ref, pull.base_sha),
            "_links": {
                name: {"href": href}
                for name, href in {
                    "self": f"{api}/pulls/{pull.number}",
                    "html": html,
                    "issue": f"{api}/issues/{pull.number}",
                    "comments": f"{api}/issues/{pull.number}/comments",
                    "review_comments": f"{api}/pulls/{pull.number}/comments",
                    "review_comment": f"{api}/pulls/comments{{/number}}",
                    "commits": f"{api}/pulls/{pull.number}/commits",
                    "statuses": f"{api}/statuses/{pull.head_sha}",
                }.items()
            },
            "author_association": "NONE",
            "auto_merge": None,
            "draft": pull.draft,
            "merged": pull.merged,
            "mergeable": mergeable,
            "rebaseable": mergeable,
            "mergeable_state": self._mergeable_state(pull, mergeable),
            "merged_by": self.user(pull.merged_by),
            "comments": 0,
            "review_comments": 0,
            "maintainer_can_modify": False,
            "commits": commits,
            "additions": 0,
            "deletions": 0,
            "changed_files": 0,
        }

    def _mergeable_state(self, pull: PullRequest, mergeable: bool | None) -> str:
        """GitHub's summary of why a pull request can or cannot merge now."""
        if mergeable is None:
            return "unknown"
        if not mergeable:
            return "dirty"
        if pull.draft:
            return "draft"
        refusal = self.state.protection_refusal(pull)
        if refusal is None:
            return "clean"
        return "behind" if refusal.startswith("Head branch is out of date") else "blocked"

    def pull_simple(self, pull: PullRequest) -> dict[str, Any]:
        """pull-request-simple: what the list endpoint returns."""
        full = self.pull(pull)
        for extra in (
            "merged",
            "mergeable",
            "rebaseable",
            "mergeable_state",
            "merged_by",
            "comments",
            "review_comments",
            "maintainer_can_modify",
            "commits",
            "additions",
            "deletions",
            "changed_files",
        ):
            full.pop(extra)
        return full

    def actions_app(self) -> dict[str, Any]:
        return self.integration_from(*GITHUB_ACTIONS_APP, "github")

    def integration(self, app: App) -> dict[str, Any]:
        shape = self.integration_from(app.id, app.slug, app.name, app.owner_login)
        shape["client_id"] = app.client_id
        return shape

    def integration_from(self, app_id: int, slug: str, name: str, owner: str) -> dict[str, Any]:
        return {
            "id": app_id,
            "slug": slug,
            "node_id": node_id("App", app_id),
            "owner": self.user(owner),
            "name": name,
            "description": None,
            "external_url": f"{self.base}/apps/{slug}",
            "html_url": f"{self.base}/apps/{slug}",
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "permissions": {"checks": "write", "contents": "write", "metadata": "read"},
            "events": [],
        }

    def check_run(self, run: CheckRun) -> dict[str, Any]:
        api = f"{self.base}/repos/{run.repository}"
        return {
            "id": run.id,
            "head_sha": run.head_sha,
            "node_id": node_id("CheckRun", run.id),
            "external_id": run.external_id or str(run.id),
            "url": f"{api}/check-runs/{run.id}",
            "html_url": f"{self.base}/{run.repository}/runs/{run.id}",
            # A CI without a page of its own links to the run on GitHub, as Actions does.
            "details_url": run.details_url or f"{self.base}/{run.repository}/runs/{run.id}",
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": iso(run.started_at),
            "completed_at": iso(run.completed_at),
            "output": {
                "title": None,
                "summary": None,
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{api}/check-runs/{run.id}/annotations",
            },
            "name": run.name,
            "check_suite": {"id": run.suite_id},
            "app": self.actions_app(),
            "pull_requests": self.pull_refs(run.repository, run.head_sha),
        }

    def pull_refs(self, full_name: str, sha: str) -> list[dict[str, Any]]:
        """pull-request-minimal entries of the open pull requests whose head is `sha`."""
        repository = self.state.repositories[full_name]
        api = f"{self.base}/repos/{full_name}"
        repo_ref = {"id": repository.id, "url": api, "name": repository.name}
        return [
            {
                "id": p.id,
                "number": p.number,
                "url": f"{api}/pulls/{p.number}",
                "head": {"ref": p.head_ref, "sha": p.head_sha, "repo": repo_ref},
                "base": {"ref": p.base_ref, "sha": p.base_sha, "repo": repo_ref},
            }
            for p in self.state.pulls.values()
            if p.repository == full_name and p.head_sha == sha and p.state == "open"
        ]

    def check_suite(self, suite: CheckSuite) -> dict[str, Any]:
        runs = [r for r in self.state.check_runs if r.suite_id == suite.id]
        done = all(r.status == "completed" for r in runs)
        conclusions = {r.conclusion for r in runs}
        worst = next(
            (
                c
                for c in ("failure", "timed_out", "cancelled", "action_required")
                if c in conclusions
            ),
            "success",
        )
        api = f"{self.base}/repos/{suite.repository}"
        return {
            "id": suite.id,
            "node_id": node_id("CheckSuite", suite.id),
            "head_branch": suite.head_branch,
            "head_sha": suite.head_sha,
            "status": "completed" if done else "in_progress",
            "conclusion": worst if done else None,
            "url": f"{api}/check-suites/{suite.id}",
            "before": None,
            "after": suite.head_sha,
            "pull_requests": self.pull_refs(suite.repository, suite.head_sha),
            "app": self.actions_app(),
            "created_at": iso(suite.created_at),
            "updated_at": iso(suite.updated_at),
            "latest_check_runs_count": len(runs),
            "head_commit": self.simple_commit(suite.repository, suite.head_sha),
            "check_runs_url": f"{api}/check-suites/{suite.id}/check-runs",
            "rerequestable": True,
            "runs_rerequestable": True,
        }

    def simple_commit(self, full_name: str, sha: str) -> dict[str, Any]:
        facts = self.state.repositories[full_name].bare.commit_facts(sha)
        tree = self.state.repositories[full_name].bare.git("rev-parse", f"{sha}^{{tree}}")
        return {
            "id": sha,
            "tree_id": tree,
            "message": facts["message"],
            "timestamp": facts["timestamp"],
            "author": {"name": facts["author_name"], "email": facts["author_email"]},
            "committer": {"name": facts["committer_name"], "email": facts["committer_email"]},
        }

    def status(self, status: CommitStatus) -> dict[str, Any]:
        return {
            "url": f"{self.base}/repos/{status.repository}/statuses/{status.sha}",
            "avatar_url": None,
            "id": status.id,
            "node_id": node_id("StatusContext", status.id),
            "state": status.state,
            "description": status.description,
            "target_url": status.target_url,
            "context": status.context,
            "created_at": iso(status.created_at),
            "updated_at": iso(status.updated_at),
            "creator": self.user(status.creator),
        }

    def combined_status(self, repository: Repository, sha: str) -> dict[str, Any]:
        latest = self.state.latest_statuses(repository, sha)
        api = f"{self.base}/repos/{repository.full_name}"
        statuses = []
        for s in latest:
            shape = self.status(s)
            shape.pop("creator")
            statuses.append(shape)
        return {
            "state": self.state.combined_state(latest),
            "statuses": statuses,
            "sha": sha,
            "total_count": len(latest),
            "repository": self.minimal_repository(repository),
            "commit_url": f"{api}/commits/{sha}",
            "url": f"{api}/commits/{sha}/status",
        }

    def deployment(self, deployment: Deployment) -> dict[str, Any]:
        api = f"{self.base}/repos/{deployment.repository}"
        return {
            "url": f"{api}/deployments/{deployment.id}",
            "id": deployment.id,
            "node_id": node_id("Deployment", deployment.id),
            "sha": deployment.sha,
            "ref": deployment.ref,
            "task": deployment.task,
            "payload": deployment.payload,
            "original_environment": deployment.environment,
            "environment": deployment.environment,
            "description": deployment.description,
            "creator": self.user(deployment.creator),
            "created_at": iso(deployment.created_at),
            "updated_at": iso(deployment.updated_at),
            "statuses_url": f"{api}/deployments/{deployment.id}/statuses",
            "repository_url": api,
            "transient_environment": deployment.transient_environment,
            "production_environment": deployment.production_environment,
        }

    def deployment_status(self, deployment: Deployment, status: DeploymentStatus) -> dict[str, Any]:
        api = f"{self.base}/repos/{deployment.repository}"
        return {
            "url": f"{api}/deployments/{deployment.id}/statuses/{status.id}",
            "id": status.id,
            "node_id": node_id("DeploymentStatus", status.id),
            "state": status.state,
            "creator": self.user(status.creator),
            "description": status.description,
            "environment": status.environment,
            "target_url": status.log_url,
            "created_at": iso(status.created_at),
            "updated_at": iso(status.created_at),
            "deployment_url": f"{api}/deployments/{deployment.id}",
            "repository_url": api,
            "environment_url": status.environment_url,
            "log_url": status.log_url,
        }

    def installation_token(self, token: AccessToken) -> dict[str, Any]:
        installation = self.state.installations[token.installation_id or 0]
        return {
            "token": token.value,
            "expires_at": iso(token.expires_at),
            "permissions": installation.permissions,
            "repository_selection": "selected",
        }
