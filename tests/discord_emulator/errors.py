"""Discord's JSON error responses (API notes §5.3, §5.4)."""

from __future__ import annotations

from typing import Any

from tests.discord_emulator.state import JSON

INVALID_FORM_BODY = 50035


class ApiError(Exception):
    """An error response: HTTP `status`, Discord `code`, `message`, optional nested `errors`."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> JSON:
        data: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def unauthorized() -> ApiError:
    return ApiError(401, 0, "401: Unauthorized")


def not_found(code: int, what: str) -> ApiError:
    return ApiError(404, code, f"Unknown {what}")


def missing_access() -> ApiError:
    return ApiError(403, 50001, "Missing Access")


def missing_permissions() -> ApiError:
    return ApiError(403, 50013, "Missing Permissions")


def empty_message() -> ApiError:
    return ApiError(400, 50006, "Cannot send an empty message")


class FormErrors:
    """Collects field errors and raises them as one 400/50035 "Invalid Form Body"."""

    def __init__(self) -> None:
        self._errors: JSON = {}

    def add(self, path: str, code: str, message: str) -> None:
        """`path` is dotted, e.g. "embeds.0.title"; Discord nests it key by key."""
        node: dict[str, Any] = self._errors
        for key in path.split("."):
            node = node.setdefault(key, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: str, value: object, limit: int) -> None:
        if isinstance(value, str) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def length_between(self, path: str, value: object, low: int, high: int) -> None:
        if not isinstance(value, str) or not low <= len(value) <= high:
            self.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")

    def required(self, path: str, present: bool) -> None:
        if not present:
            self.add(path, "BASE_TYPE_REQUIRED", "This field is required")

    def raise_if_any(self) -> None:
        if self._errors:
            raise ApiError(400, INVALID_FORM_BODY, "Invalid Form Body", self._errors)
