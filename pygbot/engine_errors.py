"""Engine failures that members should hear about in their own words.

Kept apart from the engines so the intake can tell them apart without importing an engine.
"""

from __future__ import annotations


class EngineUnavailableError(RuntimeError):
    """The model server could not be reached or kept failing (timeouts, refused connections,
    5xx) after every retry; `str()` is one line for the log, never shown to members."""


class EngineRequestError(RuntimeError):
    """The model server refused the request itself (4xx): a setting it does not accept, a
    wrong model name or key. Retrying cannot help; the message says what to check."""
