"""The one error type a user can fix: a bad image, label, folder, model file or setting.

Its message is one sentence that names the item and says what to do; the commands print it
on one line and exit with status 2.
"""


class DataError(ValueError):
    """A problem with the user's data, model or settings that they can fix; the message says how."""
