"""The one exception type for mistakes a user can make (bad layer, data, settings)."""


class FuFastError(ValueError):
    """A user-facing error: its message is one line that says what is wrong and what to do.

    The command line prints the message alone (no traceback) and exits non-zero.
    """
