"""A tiny storefront git repository for the demo, the benchmark and the tests.

`create_sample_repo(path)` makes a repository (branch main) with config.json, a few pages, a
product list, a migration and some tests, plus `check.py`, the project's check command. The check
reads CHANGEFLOW_ENVIRONMENT (staging|production) and is stricter in production, so the prompts
below exercise every path of a lifecycle with the built-in GitChangeEngine:

| prompt                      | risk | staging check | production check | tokens used     |
| --------------------------- | ---- | ------------- | ---------------- | --------------- |
| SAFE_PROMPT                 | low  | passes        | passes           | ~ the estimate  |
| OVERSPEND_PROMPT            | low  | passes        | passes           | > 1.5x estimate |
| HIGH_RISK_PROMPT            | high | passes        | passes           | ~ the estimate  |
| FAILS_IN_STAGING_PROMPT     | low  | fails         | fails            | ~ the estimate  |
| FAILS_IN_PRODUCTION_PROMPT  | low  | passes        | fails            | ~ the estimate  |

Run it as a script to make one: `python -m scripts.sample_repo /tmp/storefront`.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

# This interpreter by its absolute path: no PATH lookup (a pyenv shim alone costs ~0.2 s), and
# -I keeps the worker's PYTHON* variables and user site out of the check.
SAMPLE_CHECK_COMMAND = f"{shlex.quote(sys.executable)} -I check.py"

SAFE_PROMPT = "set theme to dark"
# A short request whose change is long: the estimate comes from the text, the cost from the diff.
OVERSPEND_PROMPT = "add a page catalog listing every product"
HIGH_RISK_PROMPT = "add a migration create_loyalty_points"
# A negative threshold is invalid everywhere.
FAILS_IN_STAGING_PROMPT = "set free_shipping_threshold to -5"
# Staging tolerates debug mode; production refuses it.
FAILS_IN_PRODUCTION_PROMPT = "set debug to true"

CONFIG = {
    "store_name": "Corner Shop",
    "currency": "EUR",
    "theme": "light",
    "debug": False,
    "maintenance_mode": False,
    "free_shipping_threshold": 50,
    "checkout": {"payment_provider": "stripe", "guest_checkout": True},
    "pages": ["home", "about"],
}

CHECK_PY = '''\
"""Checks the storefront before it serves customers; exit 0 means healthy.

CHANGEFLOW_ENVIRONMENT=production is stricter than staging: no debug mode, no maintenance mode.
"""

import json
import os
import re
import sys
from pathlib import Path

CURRENCIES = {"EUR", "USD", "GBP"}
THEMES = {"light", "dark"}
PAYMENT_PROVIDERS = {"stripe", "adyen", "paypal"}


def problems(environment: str) -> list[str]:
    found = []
    try:
        config = json.loads(Path("config.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"config.json is unreadable: {exc}"]
    if not str(config.get("store_name", "")).strip():
        found.append("store_name must not be empty")
    if config.get("currency") not in CURRENCIES:
        found.append(f"currency must be one of {sorted(CURRENCIES)}")
    if config.get("theme") not in THEMES:
        found.append(f"theme must be one of {sorted(THEMES)}")
    threshold = config.get("free_shipping_threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        found.append("free_shipping_threshold must be a number >= 0")
    provider = config.get("checkout", {}).get("payment_provider")
    if provider not in PAYMENT_PROVIDERS:
        found.append(f"checkout.payment_provider must be one of {sorted(PAYMENT_PROVIDERS)}")
    for page in config.get("pages", []):
        path = Path("pages") / f"{page}.md"
        if not path.is_file() or not path.read_text().startswith("# "):
            found.append(f"page {page} must exist as {path} and start with a title")
    numbers = sorted(int(p.name[:4]) for p in Path("migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    if numbers != list(range(1, len(numbers) + 1)):
        found.append(f"migrations must be numbered 1..n without gaps, found {numbers}")
    for path in Path("migrations").glob("*.sql"):
        if not re.fullmatch(r"[0-9]{4}_[a-z0-9_]+[.]sql", path.name):
            found.append(f"migration {path.name} is misnamed")
    if environment == "production":
        if config.get("debug"):
            found.append("debug must be off in production")
        if config.get("maintenance_mode"):
            found.append("maintenance_mode must be off in production")
    return found


def main() -> int:
    environment = os.environ.get("CHANGEFLOW_ENVIRONMENT", "staging")
    found = problems(environment)
    for problem in found:
        print(f"FAIL [{environment}] {problem}")
    if not found:
        print(f"ok [{environment}] storefront checks passed")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
'''

_ADJECTIVES = ["Sunny", "Rustic", "Classic", "Cozy", "Bold", "Tiny", "Grand", "Misty"]
_GOODS = ["Mug", "Teapot", "Scarf", "Candle", "Notebook", "Basket", "Lamp", "Apron"]


def products() -> list[dict[str, object]]:
    """Sixty-four products, the same every time."""
    items: list[dict[str, object]] = []
    for i, adjective in enumerate(_ADJECTIVES):
        for j, good in enumerate(_GOODS):
            number = i * len(_GOODS) + j + 1
            items.append(
                {
                    "sku": f"SKU-{number:03d}",
                    "name": f"{adjective} {good}",
                    "price": round(4.5 + (number * 37 % 90) / 2, 2),
                    "description": f"A {adjective.lower()} {good.lower()} made by local makers.",
                }
            )
    return items


def sample_files() -> dict[str, str]:
    return {
        "README.md": "# Corner Shop\n\nA small shop's storefront; `python3 check.py` checks it.\n",
        "config.json": json.dumps(CONFIG, indent=2) + "\n",
        "products.json": json.dumps(products(), indent=2) + "\n",
        "check.py": CHECK_PY,
        "pages/home.md": "# Welcome\n\nFresh finds from local makers, every week.\n",
        "pages/about.md": "# About us\n\nA family shop since 1998.\n",
        "migrations/0001_create_orders.sql": (
            "CREATE TABLE orders (\n    id bigserial PRIMARY KEY,\n"
            "    total_cents integer NOT NULL,\n"
            "    created_at timestamptz NOT NULL DEFAULT now()\n);\n"
        ),
        "tests/test_checkout.py": (
            "import json\n\n\ndef test_checkout_has_a_payment_provider():\n"
            '    config = json.load(open("config.json"))\n'
            '    assert config["checkout"]["payment_provider"]\n'
        ),
        "tests/test_pages.py": (
            "import json\nfrom pathlib import Path\n\n\ndef test_every_page_exists():\n"
            '    for page in json.load(open("config.json"))["pages"]:\n'
            '        assert Path("pages", f"{page}.md").is_file()\n'
        ),
    }


# Fixed identity and dates: every sample repository has the same commits.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Corner Shop",
    "GIT_AUTHOR_EMAIL": "dev@corner.shop",
    "GIT_AUTHOR_DATE": "1700000000 +0000",
    "GIT_COMMITTER_NAME": "Corner Shop",
    "GIT_COMMITTER_EMAIL": "dev@corner.shop",
    "GIT_COMMITTER_DATE": "1700000000 +0000",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def create_sample_repo(path: Path) -> Path:
    """Create the storefront repository at `path` (must be absent or empty); returns its path."""
    path = Path(path).resolve()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    for name, text in sample_files().items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    env = {**os.environ, **_GIT_ENV}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env, capture_output=True)

    git("init", "--quiet", "--initial-branch=main")
    git("add", "--all")
    git("commit", "--quiet", "--no-gpg-sign", "-m", "Corner Shop storefront")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m scripts.sample_repo <empty directory>")
    print(create_sample_repo(Path(sys.argv[1])))
