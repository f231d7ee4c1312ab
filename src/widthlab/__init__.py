"""widthlab: train small GPTs across widths and measure how their token representations overlap."""
__version__ = "0.1.0"


class WidthlabError(ValueError):
    """A user-facing error: the message names the problem and the fix, and the CLI prints it on one line."""
