"""Expected failures.

Every error a user can cause (a missing file, a malformed row, an SAE that does not
fit the model, an unreachable endpoint, an LLM reply that does not parse) is raised as
a :class:`FacsynthError`. The CLI prints its message as one line and exits non-zero;
anything else is a bug and raises with its traceback.
"""

from __future__ import annotations


class FacsynthError(Exception):
    """An expected failure whose message is meant for the user, on one line."""

    exit_code = 2


class InputError(FacsynthError):
    """A data file is missing, unreadable, empty or malformed."""


class ModelError(FacsynthError):
    """The subject model cannot be loaded or read at the requested layer."""


class SAEError(FacsynthError):
    """The SAE cannot be loaded or does not fit the subject model."""


class StoreError(FacsynthError):
    """The SQL store cannot be opened or is in an unexpected state."""


class LLMError(FacsynthError):
    """The LLM endpoint is unreachable or answered with something unusable."""
