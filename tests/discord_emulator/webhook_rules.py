"""Discord's rules for channel webhooks that the REST handlers share (notes §5.2).

- Names: 1-80 characters, never containing "clyde" or "discord" (create, modify, and the
  `username` of an execution).
- Avatars are sent as data URIs (`data:image/png;base64,...`, also jpeg/gif/webp) or null,
  and stored under a hash; messages carry the hash the webhook had when they were sent.
- Components: a webhook an application made may send any; others only with
  `with_components=true`, and then only link buttons (otherwise `components` is ignored).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from tests.discord_emulator.errors import FormErrors

WEBHOOK_NAME_LIMIT = 80
_DATA_URI = re.compile(r"data:image/(png|jpeg|gif|webp);base64,(.*)", re.DOTALL)
_FORBIDDEN_NAME_PARTS = ("clyde", "discord")
LINK_BUTTON_STYLE = 5


def check_name(errors: FormErrors, field: str, name: Any, *, required: bool) -> None:
    if name is None and not required:
        return
    errors.length_between(field, name, 1, WEBHOOK_NAME_LIMIT)
    if isinstance(name, str) and any(part in name.lower() for part in _FORBIDDEN_NAME_PARTS):
        errors.add(field, "WEBHOOK_INVALID_USERNAME", f'Username cannot contain "{name}"')


def avatar_image(errors: FormErrors, value: Any) -> bytes | None:
    """The image of an `avatar` field (None for null); a malformed one is a form error."""
    if value is None:
        return None
    match = _DATA_URI.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        errors.add("avatar", "IMAGE_INVALID", "Invalid image data")
        return None
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        errors.add("avatar", "IMAGE_INVALID", "Invalid image data")
        return None


def image_hash(image: bytes) -> str:
    return hashlib.md5(image, usedforsecurity=False).hexdigest()


def allowed_components(components: list[Any], *, app_owned: bool,
                       with_components: bool) -> list[Any]:
    """What Discord keeps of an execution's `components`."""
    if app_owned:
        return components
    if not with_components:
        return []
    for row in components:
        for part in (row.get("components") or []) if isinstance(row, dict) else []:
            if part.get("type") == 2 and part.get("style") != LINK_BUTTON_STYLE:
                errors = FormErrors()
                errors.add("components", "COMPONENT_INVALID",
                           "Interactive components need an application-owned webhook")
                errors.raise_if_any()
    return components
