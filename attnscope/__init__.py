"""attnscope: look inside transformer attention from the terminal.

The library API lives in `attnscope.api` (`load`, `Inspector`); importing this package
stays cheap (no torch) so that `attnscope params` and `--help` start fast.
"""

__version__ = "0.1.0"
