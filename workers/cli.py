"""What every command-line entry point does around its work: load settings, configure logging,
turn bad configuration into one clear line and exit code 2, and leave with os._exit.

    def main() -> None:
        run_entry_point(_main)          # async def _main(settings: Settings) -> int | None

os._exit because a process that used a Temporal client can abort at interpreter exit
(temporalio/sdk-python#300), turning success into exit code 134.
"""

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from workers.logging import configure_logging
from workers.settings import ConfigurationError, Settings, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIGURATION = 2
EXIT_INTERRUPTED = 130

AsyncMain = Callable[[Settings], Coroutine[Any, Any, int | None]]


def run_entry_point(main: AsyncMain, *, prog: str | None = None) -> NoReturn:
    prog = prog or os.path.basename(sys.argv[0]) or "changeflow"
    code = EXIT_FAILURE
    try:
        code = run(main)
    except ConfigurationError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = EXIT_BAD_CONFIGURATION
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"{prog}: {exc.code}", file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except BaseException:
        logging.getLogger(prog).exception("unexpected_error")
        code = EXIT_FAILURE
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(main: AsyncMain) -> int:
    """Settings, logging, then the coroutine; its return value is the exit code (None is 0)."""
    settings = load_settings()
    configure_logging(settings)
    return asyncio.run(main(settings)) or EXIT_OK
