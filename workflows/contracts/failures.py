"""How much of an activity failure travels to Temporal: its history keeps a short, readable
cause (the full traceback stays in the worker log), so a failure never exceeds the server's
size limit and loses its cause there."""

# The failure's message: the error's first lines and its causes' first lines, cut to this.
MAX_FAILURE_MESSAGE_CHARS = 800
# Lines of each error's text kept, and causes followed down the chain.
FAILURE_LINES_KEPT = 2
FAILURE_CAUSES_KEPT = 3
# Each error's share, so a huge outer message cannot crowd out the cause.
FAILURE_PART_CHARS = MAX_FAILURE_MESSAGE_CHARS // (FAILURE_CAUSES_KEPT + 1)
