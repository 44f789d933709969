"""The errors a user can fix: a bad config, bad data, impossible model arguments.

Each is a ValueError (what callers of a library expect), and all share `SpineNetError`,
so the command line can print any of them as one line (exit status 2) while a bug
still shows its traceback.
"""


class SpineNetError(Exception):
    """Base of the project's user-facing errors; the message names the bad key, file or value."""


class ConfigError(SpineNetError, ValueError):
    """An experiment config problem; the message starts with the dotted key."""


class DataError(SpineNetError, ValueError):
    """A dataset that cannot be used: a broken annotations file, a split with nothing to learn."""


class ModelError(SpineNetError, ValueError):
    """Model arguments that cannot build a model: an unknown id, an impossible size or block table."""
