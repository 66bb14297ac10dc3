"""The one exception type for mistakes a user can make (bad layer, data, settings), and the
check of integer settings every part of the package shares."""

import numbers



class FuFastError(ValueError):
    """A user-facing error: its message is one line that says what is wrong and what to do.

    The command line prints the message alone (no traceback) and exits non-zero.
    """


def integer_setting(value, what: str, least: int = 1) -> int:
    """``value`` as an int if it is an integer (numpy's included, bools not) of at least ``least``,
    else a one-line FuFastError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        wanted = "a positive integer" if least == 1 else f"an integer of at least {least}"
        raise FuFastError(f"{what} must be {wanted}, got {value!r}")
    return int(value)
