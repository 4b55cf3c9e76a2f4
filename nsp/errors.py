"""User-facing errors: one line naming the file/parameter and the fix."""


class NSPError(Exception):
    """An error caused by bad input or configuration; the CLI prints it as one line and exits 2."""


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    """First line of an exception's text (or a string), shortened: NSPError messages are one line."""
    text = str(exc).strip() if not isinstance(exc, str) else exc.strip()
    if isinstance(exc, BaseException):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."
