"""The one error type for problems a user can cause and fix (bad config, missing data)."""


class AblError(Exception):
    """A user-fixable problem; the CLI prints it as one line and exits 2.

    Messages name the file or key at fault and the fix, for example
    ``experiments.yaml: mask.ratio = 1.5 is outside (0, 1); use a value like 0.6``.
    """
