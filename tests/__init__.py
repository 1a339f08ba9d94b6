"""The test suite. Imported before tests/conftest.py and every test module, so this is where the
suite's processes learn to keep their bytecode.

Bytecode is cached under .changeflow/pycache even where PYTHONDONTWRITEBYTECODE is set: every
pytest-xdist worker would otherwise compile each module it imports and rewrite each test module's
asserts again, every workflow sandbox would compile the workflow modules again for each run, and
so would every worker or `changeflow` process a test starts (they inherit the environment).
"""

import os
import sys
from pathlib import Path

if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None or sys.dont_write_bytecode:
    sys.dont_write_bytecode = False
    sys.pycache_prefix = os.environ.setdefault(
        "PYTHONPYCACHEPREFIX",
        str(Path(__file__).resolve().parent.parent / ".changeflow" / "pycache"),
    )
