"""Git over smart HTTP for the stand-in: git's own `git http-backend` run as a CGI program, so
clones, fetches and pushes are real. Authentication is GitHub's: HTTP Basic with the token as
the password (`x-access-token:<installation token>` or any user name with a personal token);
without credentials the answer is 401 with a Basic challenge, so git asks its credential
helper, as it does with GitHub."""

import base64
import re
import subprocess
from dataclasses import dataclass

from scripts.github_stand_in.records import ApiError
from scripts.github_stand_in.state import GitHubState

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
GIT_PATH = re.compile(r"^/(?P<owner>[^/]+)/(?P<repo>[^/]+?)\.git(?P<rest>/.*)$")


@dataclass
class GitAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def challenge(message: str) -> GitAnswer:
    return GitAnswer(
        401,
        [("WWW-Authenticate", 'Basic realm="GitHub"'), ("Content-Type", "text/plain")],
        message.encode(),
    )


class GitSmartHttp:
    def __init__(self, state: GitHubState) -> None:
        self.state = state

    def serve(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> GitAnswer | None:
        """The answer to a git request; None when the path is not a repository's git path."""
        match = GIT_PATH.match(path)
        if match is None:
            return None
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return challenge("")
        try:
            _, _, password = base64.b64decode(encoded).decode().partition(":")
            token = self.state.authenticate(password)
            repository = self.state.repository_for(token, match["owner"], match["repo"])
        except ApiError as error:
            if error.status == 401:
                return challenge(
                    "Invalid username or token. "
                    "Password authentication is not supported for Git operations.\n"
                )
            return GitAnswer(404, [("Content-Type", "text/plain")], b"Repository not found.\n")
        except (ValueError, UnicodeDecodeError):
            return challenge("")
        environment = {
            "GIT_PROJECT_ROOT": str(self.state.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{repository.owner}/{repository.name}.git{match['rest']}",
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "CONTENT_TYPE": headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": token.login,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_HTTP_MAX_REQUEST_BUFFER": "1000M",
            "PATH": "/usr/bin:/bin",
        }
        if "content-encoding" in headers:
            environment["HTTP_CONTENT_ENCODING"] = headers["content-encoding"]
        if "git-protocol" in headers:
            environment["GIT_PROTOCOL"] = headers["git-protocol"]
        pushing = match["rest"] == "/git-receive-pack"
        if not pushing:
            return self._cgi(environment, body)
        if self.state.push_gate_ref and self.state.push_gate_ref.encode() in body:
            self.state.push_gate.pass_through()  # the push's commands name the ref it moves
        # A push: ref changes it made become GitHub's consequences (push event, pull request
        # synchronisation, CI); the lock makes the before/after comparison this push's alone.
        with self.state.lock:
            before = repository.bare.refs()
            answer = self._cgi(environment, body)
            after = repository.bare.refs()
            for ref in sorted(before.keys() | after.keys()):
                old, new = before.get(ref, "0" * 40), after.get(ref, "0" * 40)
                if old != new:
                    self.state.ref_moved(repository, ref, old, new, pusher=token.login)
            return answer

    @staticmethod
    def _cgi(environment: dict[str, str], body: bytes) -> GitAnswer:
        done = subprocess.run([GIT_HTTP_BACKEND], input=body, env=environment, capture_output=True)
        head, _, content = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, content = done.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split(" ", 1)[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        return GitAnswer(status, headers, content)
