"""The exceptions the CLI turns into one line instead of a traceback.

Anything raised as `TilelliError` is printed by the CLI as a single line on stderr with exit
code 2 and no traceback; everything else is a bug and keeps its traceback. `Interrupted` is a
handled Ctrl-C (exit code 130).
"""


class TilelliError(Exception):
    """A problem with the user's input (bad value, missing file, wrong format): say what and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, handled: the command stopped cleanly, and the message (possibly empty) says what
    it saved and how to go on. The CLI prints it as one line and exits 130, like any Ctrl-C;
    being a KeyboardInterrupt, it still stops a library caller that does not catch it."""


def shown(value: object, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters, for error messages: a value read from a damaged
    file can be megabytes long, and an error is one short line that never echoes a file back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text):,} chars)"
