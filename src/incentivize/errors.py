"""The one exception type a user is meant to see."""


class IncentivizeError(Exception):
    """An error the user can fix. The CLI prints str(err) as one line and exits with status 2."""
