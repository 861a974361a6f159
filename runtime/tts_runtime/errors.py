"""Errors that end a runtime command with one of the contract's exit codes.

A command raises one of these with a message a person can act on; ``tts_runtime.cli`` prints the
message (no traceback: the traceback of a bad input helps nobody) and exits with the code, which the
operator maps onto "retry" or "do not retry".
"""

from __future__ import annotations

from tts_contract.contract import ExitCode


class RuntimeCommandError(Exception):
    """A failure with a known exit code and a message meant for people."""

    exit_code: ExitCode = ExitCode.FAILURE


class BadInputError(RuntimeCommandError):
    """The input (a model directory, a dataset, a flag) is wrong: retrying cannot help."""

    exit_code = ExitCode.BAD_INPUT


class PreflightFailedError(RuntimeCommandError):
    """The device self-test failed under a policy that requires the device."""

    exit_code = ExitCode.PREFLIGHT_FAILED


class PortInUseError(RuntimeCommandError):
    """A port the command would listen on is held by another process (it may be free on a retry)."""

    exit_code = ExitCode.FAILURE
