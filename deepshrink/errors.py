"""Error types users can catch. The CLI turns any `UserError` into one line and exit status 2."""


class DeepshrinkError(Exception):
    """Base class of every error deepshrink raises on purpose."""


class UserError(DeepshrinkError, ValueError):
    """Bad input from the user (missing data, bad flag value, wrong checkpoint).

    The message names the problem and the fix; the CLI prints it without a traceback.
    """


class PackFormatError(UserError):
    """A packed `.dsz` file is malformed, truncated, corrupted or of an unknown version."""
