"""The one exception type a user is meant to see."""


class IncentivizeError(Exception):
    """An error the user can fix. The CLI prints str(err) as one line and exits with status 2."""


def describe(err: BaseException) -> str:
    """An exception as one line, `"ValueError: bad input"`, for messages that quote it.

    >>> describe(ValueError("bad\\n  input"))
    'ValueError: bad input'
    """
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
