"""One exception type for everything a user can get wrong.

The CLI prints ``error: <message>`` and exits 2, the app shows ``st.error(message)``; neither shows
a traceback. Messages are one line and say what to do next.
"""


class SimDiffError(Exception):
    """A user-facing error with a one-line, actionable message."""


class Cancelled(SimDiffError):
    """Raised from inside a long run when the caller's ``should_stop()`` returns True."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)
