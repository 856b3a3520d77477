"""The one error type for user mistakes: the CLI prints it as one line and exits with code 2."""


class LumenkitError(Exception):
    """A user-facing error (bad file, bad flag, bad argument). Message names the culprit and the fix."""


def require(condition: bool, message: str) -> None:
    """Raise LumenkitError(message) unless condition holds."""
    if not condition:
        raise LumenkitError(message)
