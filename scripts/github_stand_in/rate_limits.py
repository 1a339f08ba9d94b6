"""GitHub's rate limits in the stand-in: each installation (or person) has an hour of 5000
requests, counted and reported in `x-ratelimit-*` headers; a test can exhaust it or arm
secondary limits (403 or 429 with `retry-after`) on chosen requests."""

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from scripts.github_stand_in.records import AccessToken, ApiError, StandInClock

PRIMARY_LIMIT = 5000


@dataclass
class SecondaryLimit:
    method: str
    path_contains: str
    times: int
    retry_after: int
    status: int


@dataclass
class RateWindow:
    used: int
    resets_at: datetime


class RateLimits:
    def __init__(self, clock: StandInClock, lock: threading.RLock) -> None:
        self.clock = clock
        self.lock = lock
        self.secondary_limits: list[SecondaryLimit] = []
        self.rate_windows: dict[str, RateWindow] = {}

    def count_request(self, token: AccessToken, method: str, path: str) -> dict[str, str]:
        """Count one request against the token's hour; the headers to answer with, or the
        403/429 GitHub answers when a primary or an armed secondary limit refuses it."""
        with self.lock:
            now = self.clock.now()
            key = _rate_key(token)
            window = self.rate_windows.get(key)
            if window is None or window.resets_at <= now:
                window = self.rate_windows[key] = RateWindow(0, now + timedelta(hours=1))
            if window.used >= PRIMARY_LIMIT:
                who = (
                    f"installation ID {token.installation_id}"
                    if token.installation_id
                    else f"user ID {abs(hash(token.login)) % 10**8}"
                )
                raise ApiError(
                    403,
                    f"API rate limit exceeded for {who}.",
                    documentation_url="https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    headers=self._rate_headers(window),
                )
            for limit in self.secondary_limits:
                if limit.times > 0 and limit.method == method and limit.path_contains in path:
                    limit.times -= 1
                    raise ApiError(
                        limit.status,
                        "You have exceeded a secondary rate limit and have been temporarily "
                        "blocked from content creation. Please retry your request again later.",
                        documentation_url="https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                        headers={
                            **self._rate_headers(window),
                            "retry-after": str(limit.retry_after),
                        },
                    )
            window.used += 1
            return self._rate_headers(window)

    def refund_request(self, token: AccessToken) -> dict[str, str]:
        with self.lock:
            key = _rate_key(token)
            window = self.rate_windows[key]
            window.used = max(window.used - 1, 0)
            return self._rate_headers(window)

    @staticmethod
    def _rate_headers(window: RateWindow) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(PRIMARY_LIMIT),
            "x-ratelimit-remaining": str(max(PRIMARY_LIMIT - window.used, 0)),
            "x-ratelimit-reset": str(int(window.resets_at.timestamp())),
            "x-ratelimit-used": str(window.used),
            "x-ratelimit-resource": "core",
        }

    def exhaust_primary_limit(self, token: AccessToken) -> None:
        with self.lock:
            key = _rate_key(token)
            self.rate_windows[key] = RateWindow(
                PRIMARY_LIMIT, self.clock.now() + timedelta(hours=1)
            )

    def arm_secondary_limit(
        self,
        method: str,
        path_contains: str,
        *,
        times: int = 1,
        retry_after: int = 60,
        status: int = 403,
    ) -> None:
        """The next `times` requests `method` on a path containing `path_contains` are refused
        with GitHub's secondary-limit answer (403 or 429, `retry-after`)."""
        with self.lock:
            self.secondary_limits.append(
                SecondaryLimit(method, path_contains, times, retry_after, status)
            )


def _rate_key(token: AccessToken) -> str:
    """Installation tokens share their installation's hour; a person's tokens share theirs."""
    return f"installation:{token.installation_id}" if token.installation_id else token.login
