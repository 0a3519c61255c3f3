"""The one exception type that means "the user's input is wrong" (the CLI turns it into exit code 2)."""


class InputError(ValueError):
    """Invalid user input: a bad covariance, grid, family name, preset or file.

    The message is one line that names the problem; the CLI prints it and exits with code 2.
    """
