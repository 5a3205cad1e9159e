"""The one exception type for mistakes a user can fix (bad config value, missing file, bad
argument): the CLI prints it as ``error: <message>`` with exit status 2, no traceback."""


class UserError(ValueError):
    """A mistake in the user's input; its message names the key, file or line to fix."""
