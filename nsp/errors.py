"""User-facing errors: one line naming the file/parameter and the fix."""


class NSPError(Exception):
    """An error caused by bad input or configuration; the CLI prints it as one line and exits 2."""
