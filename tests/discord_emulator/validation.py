"""Server-side checks Discord makes on what a bot sends (API notes §5.3, §5.5, §7.2, §7.3).

dpy checks almost nothing client-side, so these are what make a bot's mistakes visible in tests.
Each function raises `ApiError` (400 / 50035 "Invalid Form Body", or 50006 for empty messages).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tests.discord_emulator.errors import FormErrors, empty_message
from tests.discord_emulator.state import JSON

CONTENT_LIMIT = 2000  # characters in a message's content
NONCE_LIMIT = 25  # characters in a string nonce
EMBEDS_LIMIT = 10  # embeds per message
EMBEDS_TOTAL_CHARS = 6000  # characters across all embeds of a message
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096}
EMBED_FIELDS_LIMIT = 25
STICKERS_LIMIT = 3
ROWS_LIMIT = 5  # action rows in a legacy message
ROW_BUTTONS_LIMIT = 5
V2_COMPONENTS_LIMIT = 40  # components in total with IS_COMPONENTS_V2
CUSTOM_ID_LIMIT = 100
BUTTON_LABEL_LIMIT = 80
SELECT_OPTIONS_LIMIT = 25
MODAL_TITLE_LIMIT = 45
MODAL_CHILDREN_LIMIT = 5
LABEL_LIMIT = 45
LABEL_DESCRIPTION_LIMIT = 100
TEXT_INPUT_LIMIT = 4000
PLACEHOLDER_LIMIT = 100
CHOICES_LIMIT = 25
CHOICE_NAME_LIMIT = 100
CHOICE_VALUE_LIMIT = 100
OPTIONS_LIMIT = 25
COMMAND_DESCRIPTION_LIMIT = 100
FLAG_IS_COMPONENTS_V2 = 1 << 15

SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
MODAL_CHOICE_TYPES = frozenset({19, 21, 22, 23})  # file upload, radio, checkbox group, checkbox
ALLOWED_PARSE = frozenset({"users", "roles", "everyone"})
COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


def validate_message(body: JSON, *, files: int = 0, creating: bool = True) -> None:
    """A message create/edit body; creating an empty message is 50006."""
    errors = FormErrors()
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        errors.add("content", "BASE_TYPE_STRING", "Must be a string.")
    errors.max_length("content", content, CONTENT_LIMIT)
    errors.max_length("nonce", body.get("nonce"), NONCE_LIMIT)
    _check_embeds(errors, body.get("embeds") or [])
    _check_components(errors, body.get("components") or [], int(body.get("flags") or 0))
    _check_allowed_mentions(errors, body.get("allowed_mentions"))
    if len(body.get("sticker_ids") or []) > STICKERS_LIMIT:
        errors.add(
            "sticker_ids", "BASE_TYPE_MAX_LENGTH", f"Must be {STICKERS_LIMIT} or fewer in length."
        )
    errors.raise_if_any()
    if creating and not has_substance(body, files):
        raise empty_message()


def has_substance(body: JSON, files: int = 0) -> bool:
    """Discord refuses messages with none of content/embeds/stickers/components/files/poll."""
    keys = ("content", "embeds", "sticker_ids", "components", "poll", "attachments")
    return files > 0 or any(body.get(k) for k in keys)


def _check_embeds(errors: FormErrors, embeds: Sequence[JSON]) -> None:
    if len(embeds) > EMBEDS_LIMIT:
        errors.add("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {EMBEDS_LIMIT} or fewer in length.")
    total = 0
    for index, embed in enumerate(embeds):
        for key, limit in EMBED_TEXT_LIMITS.items():
            errors.max_length(f"embeds.{index}.{key}", embed.get(key), limit)
        fields = embed.get("fields") or []
        if len(fields) > EMBED_FIELDS_LIMIT:
            errors.add(
                f"embeds.{index}.fields",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {EMBED_FIELDS_LIMIT} or fewer in length.",
            )
        for f_index, embed_field in enumerate(fields):
            errors.max_length(f"embeds.{index}.fields.{f_index}.name", embed_field.get("name"), 256)
            errors.max_length(
                f"embeds.{index}.fields.{f_index}.value", embed_field.get("value"), 1024
            )
        errors.max_length(
            f"embeds.{index}.footer.text", (embed.get("footer") or {}).get("text"), 2048
        )
        errors.max_length(
            f"embeds.{index}.author.name", (embed.get("author") or {}).get("name"), 256
        )
        total += _embed_chars(embed)
    if total > EMBEDS_TOTAL_CHARS:
        errors.add("embeds", "MESSAGE_EMBEDS_TOO_LONG", "Embed size exceeds maximum size of 6000")


def _embed_chars(embed: JSON) -> int:
    texts = [
        embed.get("title"),
        embed.get("description"),
        (embed.get("footer") or {}).get("text"),
        (embed.get("author") or {}).get("name"),
    ]
    for embed_field in embed.get("fields") or []:
        texts += [embed_field.get("name"), embed_field.get("value")]
    return sum(len(t) for t in texts if isinstance(t, str))


def _check_components(errors: FormErrors, rows: Sequence[JSON], flags: int) -> None:
    if flags & FLAG_IS_COMPONENTS_V2:
        if _count_components(rows) > V2_COMPONENTS_LIMIT:
            errors.add(
                "components",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {V2_COMPONENTS_LIMIT} or fewer in length.",
            )
        return
    if len(rows) > ROWS_LIMIT:
        errors.add(
            "components", "BASE_TYPE_MAX_LENGTH", f"Must be {ROWS_LIMIT} or fewer in length."
        )
    seen: set[str] = set()
    for index, row in enumerate(rows):
        path = f"components.{index}"
        if row.get("type") != 1:
            errors.add(
                f"{path}.type", "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).'
            )
            continue
        children = row.get("components") or []
        if not 1 <= len(children) <= ROW_BUTTONS_LIMIT:
            errors.add(
                f"{path}.components",
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {ROW_BUTTONS_LIMIT} in length.",
            )
        for c_index, child in enumerate(children):
            _check_row_child(errors, f"{path}.components.{c_index}", child, len(children), seen)


def _check_row_child(
    errors: FormErrors, path: str, child: JSON, siblings: int, seen: set[str]
) -> None:
    kind = child.get("type")
    if kind == 2:
        _check_button(errors, path, child)
    elif kind in SELECT_TYPES:
        if siblings > 1:
            errors.add(
                path,
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )
        errors.length_between(f"{path}.custom_id", child.get("custom_id"), 1, CUSTOM_ID_LIMIT)
        if kind == 3 and not 1 <= len(child.get("options") or []) <= SELECT_OPTIONS_LIMIT:
            errors.add(
                f"{path}.options",
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {SELECT_OPTIONS_LIMIT} in length.",
            )
    else:
        errors.add(f"{path}.type", "UNION_TYPE_CHOICES", "Invalid component type in action row.")
    custom_id = child.get("custom_id")
    if isinstance(custom_id, str):
        if custom_id in seen:
            errors.add(
                f"{path}.custom_id",
                "COMPONENT_CUSTOM_ID_DUPLICATED",
                "Component custom id cannot be duplicated",
            )
        seen.add(custom_id)


def _check_button(errors: FormErrors, path: str, button: JSON) -> None:
    errors.max_length(f"{path}.label", button.get("label"), BUTTON_LABEL_LIMIT)
    style = button.get("style")
    if style == 5:
        errors.required(f"{path}.url", bool(button.get("url")))
        if button.get("custom_id"):
            errors.add(
                f"{path}.custom_id",
                "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                "A custom id cannot be specified for link buttons",
            )
    elif style != 6:
        errors.length_between(f"{path}.custom_id", button.get("custom_id"), 1, CUSTOM_ID_LIMIT)


def _count_components(components: Sequence[Any]) -> int:
    total = 0
    for component in components:
        if not isinstance(component, dict):
            continue
        total += 1
        total += _count_components(component.get("components") or [])
        if isinstance(component.get("accessory"), dict):
            total += 1
        if isinstance(component.get("component"), dict):
            total += _count_components([component["component"]])
    return total


def _check_allowed_mentions(errors: FormErrors, allowed: Any) -> None:
    if allowed is None:
        return
    parse = allowed.get("parse") or []
    for index, value in enumerate(parse):
        if value not in ALLOWED_PARSE:
            errors.add(
                f"allowed_mentions.parse.{index}",
                "BASE_TYPE_CHOICES",
                f"Value must be one of {sorted(ALLOWED_PARSE)}.",
            )
    for kind in ("users", "roles"):
        if kind in parse and allowed.get(kind) is not None:
            errors.add(
                "allowed_mentions",
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )
        if len(allowed.get(kind) or []) > 100:
            errors.add(
                f"allowed_mentions.{kind}",
                "BASE_TYPE_MAX_LENGTH",
                "Must be 100 or fewer in length.",
            )


def validate_modal(data: JSON) -> None:
    """A type-9 callback's data: custom_id, title <= 45, 1-5 children, text inputs."""
    errors = FormErrors()
    errors.length_between("data.custom_id", data.get("custom_id"), 1, CUSTOM_ID_LIMIT)
    errors.length_between("data.title", data.get("title"), 1, MODAL_TITLE_LIMIT)
    children = data.get("components") or []
    if not 1 <= len(children) <= MODAL_CHILDREN_LIMIT:
        errors.add(
            "data.components",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MODAL_CHILDREN_LIMIT} in length.",
        )
    for index, child in enumerate(children):
        _check_modal_child(errors, f"data.components.{index}", child)
    errors.raise_if_any()


def _check_modal_child(errors: FormErrors, path: str, child: JSON) -> None:
    kind = child.get("type")
    if kind == 1:
        inner = child.get("components") or []
        if len(inner) != 1:
            errors.add(f"{path}.components", "BASE_TYPE_BAD_LENGTH", "Must be 1 in length.")
        for index, component in enumerate(inner):
            _check_modal_input(errors, f"{path}.components.{index}", component, legacy=True)
    elif kind == 18:
        errors.length_between(f"{path}.label", child.get("label"), 1, LABEL_LIMIT)
        errors.max_length(f"{path}.description", child.get("description"), LABEL_DESCRIPTION_LIMIT)
        inner_component = child.get("component")
        if not isinstance(inner_component, dict):
            errors.required(f"{path}.component", False)
        else:
            _check_modal_input(errors, f"{path}.component", inner_component, legacy=False)
    elif kind != 10:  # text displays need no checks here
        errors.add(f"{path}.type", "UNION_TYPE_CHOICES", "Invalid component type in modal.")


def _check_modal_input(errors: FormErrors, path: str, component: JSON, *, legacy: bool) -> None:
    kind = component.get("type")
    errors.length_between(f"{path}.custom_id", component.get("custom_id"), 1, CUSTOM_ID_LIMIT)
    if kind in SELECT_TYPES or kind in MODAL_CHOICE_TYPES:
        return
    if kind != 4:
        errors.add(f"{path}.type", "UNION_TYPE_CHOICES", "Invalid component type in modal.")
        return
    if component.get("style") not in (1, 2):
        errors.add(f"{path}.style", "BASE_TYPE_CHOICES", "Value must be one of (1, 2).")
    if legacy:  # inside a type-18 label the label lives on the wrapper (dpy sends null here)
        errors.length_between(f"{path}.label", component.get("label"), 1, LABEL_LIMIT)
    else:
        errors.max_length(f"{path}.label", component.get("label"), LABEL_LIMIT)
    _check_bounds(errors, path, component)
    errors.max_length(f"{path}.value", component.get("value"), TEXT_INPUT_LIMIT)
    errors.max_length(f"{path}.placeholder", component.get("placeholder"), PLACEHOLDER_LIMIT)


def _check_bounds(errors: FormErrors, path: str, component: JSON) -> None:
    low, high = component.get("min_length"), component.get("max_length")
    if low is not None and not 0 <= low <= TEXT_INPUT_LIMIT:
        errors.add(
            f"{path}.min_length",
            "NUMBER_TYPE_MAX",
            f"Int value should be between 0 and {TEXT_INPUT_LIMIT}.",
        )
    if high is not None and not 1 <= high <= TEXT_INPUT_LIMIT:
        errors.add(
            f"{path}.max_length",
            "NUMBER_TYPE_MAX",
            f"Int value should be between 1 and {TEXT_INPUT_LIMIT}.",
        )


def validate_choices(choices: Sequence[JSON]) -> None:
    """An autocomplete result: at most 25 choices, names 1-100, string values <= 100."""
    errors = FormErrors()
    if len(choices) > CHOICES_LIMIT:
        errors.add(
            "data.choices", "BASE_TYPE_MAX_LENGTH", f"Must be {CHOICES_LIMIT} or fewer in length."
        )
    for index, choice in enumerate(choices):
        errors.length_between(
            f"data.choices.{index}.name", choice.get("name"), 1, CHOICE_NAME_LIMIT
        )
        errors.max_length(f"data.choices.{index}.value", choice.get("value"), CHOICE_VALUE_LIMIT)
    errors.raise_if_any()


def validate_commands(commands: Sequence[JSON]) -> None:
    """A bulk-overwrite list of application commands (names, descriptions, options)."""
    errors = FormErrors()
    seen: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        kind = int(command.get("type") or 1)
        name = command.get("name")
        _check_name(errors, str(index), name, lowercase=kind == 1)
        if kind == 1:
            errors.length_between(
                f"{index}.description", command.get("description"), 1, COMMAND_DESCRIPTION_LIMIT
            )
            _check_options(errors, f"{index}.options", command.get("options") or [])
        key = (kind, str(name))
        if key in seen:
            errors.add(
                f"{index}.name",
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                f"Application command names must be unique: {name}",
            )
        seen.add(key)
    errors.raise_if_any()


def _check_name(errors: FormErrors, path: str, name: Any, *, lowercase: bool) -> None:
    if not isinstance(name, str) or not (1 <= len(name) <= 32):
        errors.add(f"{path}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
    elif lowercase and (not COMMAND_NAME.match(name) or name != name.lower()):
        errors.add(
            f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name}"
        )


def _check_options(errors: FormErrors, path: str, options: Sequence[JSON]) -> None:
    if len(options) > OPTIONS_LIMIT:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {OPTIONS_LIMIT} or fewer in length.")
    optional_seen = False
    for index, option in enumerate(options):
        option_path = f"{path}.{index}"
        _check_name(errors, option_path, option.get("name"), lowercase=True)
        errors.length_between(
            f"{option_path}.description", option.get("description"), 1, COMMAND_DESCRIPTION_LIMIT
        )
        if option.get("type") in (1, 2):
            _check_options(errors, f"{option_path}.options", option.get("options") or [])
            continue
        if option.get("required"):
            if optional_seen:
                errors.add(
                    f"{option_path}.required",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            optional_seen = True
        if len(option.get("choices") or []) > CHOICES_LIMIT:
            errors.add(
                f"{option_path}.choices",
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {CHOICES_LIMIT} or fewer in length.",
            )
