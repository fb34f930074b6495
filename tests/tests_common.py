"""Small helpers shared by tests."""


def chain_text(error: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from (MONAI wraps config errors)."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(parts)
