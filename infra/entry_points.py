"""What every command-line entry point does around its work: load settings, configure logging,
turn bad configuration into one clear line and exit code 2, and leave with os._exit.

    def main() -> None:
        run_entry_point(_main)          # async def _main(settings: Settings) -> int | None

os._exit because a process that used a Temporal client can abort at interpreter exit
(temporalio/sdk-python#300, `Fatal Python error: PyGILState_Release`), turning success into exit
code 134. A plain script of another service (no changeflow settings) leaves the same way:

    run_script(main())                  # main: any coroutine returning int | None
"""

import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    # Imported where used: `changeflow --help` leaves through exit_process without loading the
    # settings, the models or logging.
    from infra.settings import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIGURATION = 2
EXIT_INTERRUPTED = 130

AsyncMain = Callable[["Settings"], Coroutine[Any, Any, int | None]]


def exit_process(code: int) -> NoReturn:
    """Flush what the process wrote, then leave without the interpreter's exit (see above)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_script(main: Coroutine[Any, Any, int | None]) -> NoReturn:
    """`asyncio.run(main)` for a script that used a Temporal client: its return value is the
    exit code (None is 0), an uncaught error is printed and exits 1."""
    code = EXIT_FAILURE
    try:
        code = asyncio.run(main) or EXIT_OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BaseException:
        traceback.print_exc()
    finally:
        exit_process(code)


def run_entry_point(main: AsyncMain, *, prog: str | None = None) -> NoReturn:
    from infra.settings import ConfigurationError

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
        exit_process(code)


def run(main: AsyncMain) -> int:
    """Settings, logging, then the coroutine; its return value is the exit code (None is 0)."""
    from infra.logging import configure_logging
    from infra.settings import load_settings

    settings = load_settings()
    configure_logging(settings)
    return asyncio.run(main(settings)) or EXIT_OK
