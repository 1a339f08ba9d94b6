"""`make demo` keeps its Web UI links live for a person at a terminal and exits by itself
elsewhere (CI), saying last how to bring the links back."""

import io

from scripts.demo import keeps_running


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_at_a_terminal_the_demo_keeps_its_stack_up_for_the_links() -> None:
    assert keeps_running([], {}, Terminal(), Terminal())


def test_without_a_terminal_or_in_ci_the_demo_exits_by_itself() -> None:
    assert not keeps_running([], {}, None, Terminal())  # no standard input, as CI runs it
    assert not keeps_running([], {}, Terminal(), io.StringIO())  # output piped
    assert not keeps_running([], {"CI": "true"}, Terminal(), Terminal())


def test_flags_force_either_way() -> None:
    assert keeps_running(["--keep-running"], {"CI": "true"}, None, None)
    assert not keeps_running(["--exit"], {}, Terminal(), Terminal())
