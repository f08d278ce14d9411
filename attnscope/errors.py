"""The project's exceptions, each carrying a message a user can act on.

Follows the `hf` CLI and simonw's `llm`: every error is a sentence that says what went
wrong and, through `hint`, what to do about it. The CLI's one handler in `cli.main()`
turns these into one red line on stderr; nothing else in the package prints errors.
"""

from __future__ import annotations


class AttnscopeError(Exception):
    """Base class: a failure the user can fix. `exit_code` 1 = run time, 2 = usage."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(AttnscopeError):
    """Bad command-line values: a malformed selector, a conflicting pair of options."""

    exit_code = 2


class ConfigError(AttnscopeError):
    """A config.json or preset that cannot describe a model."""


class UnknownPresetError(UsageError):
    """A `--config NAME` that is neither a preset nor a path."""


class UnsupportedArchitectureError(ConfigError):
    """A `model_type` we have no implementation for."""


class CheckpointError(AttnscopeError):
    """Missing, unreadable or corrupt checkpoint files (safetensors, index, shards)."""


class ModelNotFoundError(CheckpointError):
    """A path that does not exist or a hub id that is not in the local cache."""


class TokenizerError(AttnscopeError):
    """tokenizer.json missing or corrupt, or text the model cannot take."""


class InputError(UsageError):
    """Bad text: empty, or longer than the model's positions."""


class SelectionError(UsageError):
    """A `--layer`/`--head` selector that is malformed or out of range."""


class DeviceError(AttnscopeError):
    """A device or dtype this machine cannot run."""


class ExportError(AttnscopeError):
    """An output file that cannot be written (exists, missing folder, no space)."""


class OutputNameError(ExportError):
    """An output name whose format cannot be told: a usage error, found before any work."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while a command ran (the CLI's handler raises it).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it
    and every `finally` (the exports' removal of their temporary files) still runs; the
    CLI reports it as one line and exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"
