"""Domain errors: the CLI turns each into one red line and exit code 1."""


class ArError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
