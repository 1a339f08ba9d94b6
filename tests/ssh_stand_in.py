"""A git server over ssh for the tests (this machine has no sshd): an asyncssh server that,
like GitHub's or GitLab's ssh endpoint or a plain `sshd` with git installed, accepts one user
(`git`) by public key only and runs git's own `git-upload-pack` or `git-receive-pack` on the
repository its exec request names. The repositories are real; only the ssh daemon stands in.

Facts it follows (and where they come from):
- git runs `git-upload-pack '<path>'` (fetch, clone, ls-remote) or `git-receive-pack '<path>'`
  (push) as an ssh exec request, the path single-quoted for the remote shell
  (git-scm.com/docs/gitprotocol-pack, "SSH Transport"; libgit2's `ssh_libssh2.c` sends the
  same commands). For `ssh://host/acme/shop.git` the path is `/acme/shop.git`; for the
  scp-like `git@host:acme/shop.git` it is `acme/shop.git`, relative to the login's home:
  this server maps both onto `<root>/acme/shop.git`, as hosted git servers do.
- Anything else asked to run is refused with exit code 128 and a message on stderr, as
  `git-shell` refuses an unknown command (git-scm.com/docs/git-shell).
- The process's exit status is sent as the channel's exit-status (RFC 4254, 6.10); git's
  output on stdout is the pack protocol, its messages go to stderr.
- Host keys: the client checks the server's host key against its known_hosts; an entry for a
  port other than 22 is written `[host]:port` (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").
"""

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh

GIT_COMMANDS = ("git-upload-pack", "git-receive-pack")
USER = "git"


class SshGitServer:
    """Serves the bare repositories under `root` to the holders of `authorized` keys."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = root.resolve()
        self.host = host
        self.port = port
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.authorized: list[asyncssh.SSHKey] = []
        self.commands: list[str] = []  # every exec request an authenticated client made
        self.logins: list[str] = []  # the user name of every accepted login
        self._server: asyncssh.SSHAcceptor | None = None

    def authorize(self, key: asyncssh.SSHKey) -> None:
        self.authorized.append(key)

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        """A known_hosts entry for this server (with another key: a server impersonating it)."""
        public = (key or self.host_key).export_public_key().decode().strip()
        where = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{where} {public}\n"

    def ssh_url(self, path: str) -> str:
        return f"ssh://{USER}@{self.host}:{self.port}/{path}"

    def scp_like(self, path: str) -> str:
        """`git@host:path`: port 22 only (the form has no place for a port)."""
        assert self.port == 22, "an scp-like address always means port 22"
        return f"{USER}@{self.host}:{path}"

    async def start(self) -> None:
        server = self

        class Login(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True  # always authenticate: no anonymous access

            def password_auth_supported(self) -> bool:
                return False

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                accepted = username == USER and any(
                    key.public_data == known.public_data for known in server.authorized
                )
                if accepted:
                    server.logins.append(username)
                return accepted

        self._server = await asyncssh.create_server(
            Login,
            self.host,
            self.port,
            server_host_keys=[self.host_key],
            process_factory=self._run,
            encoding=None,  # the pack protocol is bytes
            allow_scp=False,
            sftp_factory=None,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _run(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        self.commands.append(command)
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = []
        if len(argv) != 2 or argv[0] not in GIT_COMMANDS:
            process.stderr.write(f"fatal: unrecognized command '{command}'\n".encode())
            process.exit(128)
            return
        repository = (self.root / argv[1].lstrip("/")).resolve()
        if not repository.is_relative_to(self.root) or not (repository / "HEAD").is_file():
            message = f"fatal: '{argv[1]}' does not appear to be a git repository\n"
            process.stderr.write(message.encode())
            process.exit(128)
            return
        git = await asyncio.create_subprocess_exec(
            "git",
            argv[0].removeprefix("git-"),
            str(repository),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert git.stdin is not None and git.stdout is not None and git.stderr is not None
        # The channel's bytes to git and back; the client may never close its side, so the
        # copy into git ends when git does.
        into = asyncio.ensure_future(_copy_into(process.stdin, git.stdin))
        await asyncio.gather(
            _copy_out(git.stdout, process.stdout), _copy_out(git.stderr, process.stderr)
        )
        status = await git.wait()
        into.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await into
        process.exit(status)


async def _copy_into(channel: asyncssh.SSHReader[bytes], git: asyncio.StreamWriter) -> None:
    try:
        while data := await channel.read(65536):
            git.write(data)
            await git.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # git exited first: it read all it wanted
    finally:
        git.close()


async def _copy_out(git: asyncio.StreamReader, channel: asyncssh.SSHWriter[bytes]) -> None:
    while data := await git.read(65536):
        channel.write(data)
        await channel.drain()


@contextlib.asynccontextmanager
async def ssh_git_server(
    root: Path, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SshGitServer]:
    server = SshGitServer(root, host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
