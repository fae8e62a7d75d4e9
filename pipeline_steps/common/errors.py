"""The one exception type users see: a fixable problem, printed as one line."""


class NasflowError(Exception):
    """Bad input or a missing resource. The CLI prints the message alone and exits 2."""
