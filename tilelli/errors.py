"""The one exception type a user can act on.

Anything raised as `TilelliError` is printed by the CLI as a single line on stderr with exit
code 2 and no traceback; everything else is a bug and keeps its traceback.
"""


class TilelliError(Exception):
    """A problem with the user's input (bad value, missing file, wrong format): say what and what to do."""
