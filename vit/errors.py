"""One exception type for mistakes a user can fix (bad path, bad image, wrong checkpoint).

Scripts catch it and print its message as one line, never a traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that names the file and what to do."""
