"""Typed settings: dataclass configs from dicts, YAML files and `key=value` overrides.

Every config of the package (the trainer's, each recipe's, `ModelConfig`) is a dataclass
whose fields carry a type annotation and a default. `from_dict` converts each value to its
field's type (`list[int]` element by element) and refuses what does not fit, so a bad setting
is one line naming the key before any work starts (YAML reads `1e-5` as a string, `3` where a
float is meant, `true` where an int is meant); range checks stay in each dataclass's
`__post_init__`. The files settings come from (YAML, JSON, text) are read here too, so that
every decode or syntax error is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")

_SCALARS = {"float": float, "int": int, "bool": bool, "str": str, "list": list, "dict": dict}


def convert(name: str, value: Any, annotation: str) -> Any:
    """`value` as the type named by `annotation` ("float", "Optional[int]", "list[int]", ...).

    Raises:
        ValueError: the value cannot mean that type (names the key, or `key[i]` for a list
            element, and the value).
    """
    optional = re.fullmatch(r"Optional\[(.+)\]", annotation)
    kind_name = optional.group(1) if optional else annotation
    if value is None:
        if optional:
            return None
        raise ValueError(f"setting {name} must be {_article(kind_name)} {kind_name}, got null")
    element = re.fullmatch(r"list\[(.+)\]", kind_name)
    if element:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"setting {name} must be a list, got {value!r}")
        return [convert(f"{name}[{i}]", v, element.group(1)) for i, v in enumerate(value)]
    kind = _SCALARS.get(kind_name)
    if kind is None:
        return value
    if kind in (float, int) and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and kind is float:
            return number
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
    elif kind is str and isinstance(value, str):
        return value
    elif kind in (bool, list, dict) and isinstance(value, kind):
        return value
    raise ValueError(f"setting {name} must be {_article(kind_name)} {kind_name}, got {value!r}")


def _article(kind_name: str) -> str:
    return "an" if kind_name[0] in "aeiou" else "a"


def integer(name: str, value: Any, low: Optional[int] = None) -> int:
    """`value` if it is an integer (numpy's too) of at least `low`; no bool, float or string.

    For shapes read from JSON (subnets), where `"48"` or `48.5` is a mistake to name, not to
    round: "embed_dim 48 is not in the space" would hide that a string was given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return int(value)


def field_types(cls: type) -> dict[str, str]:
    """Field name -> annotation string of a dataclass."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], d: dict[str, Any], what: str = "config") -> T:
    """Builds `cls` from `d`, converting each value by its field's type.

    Raises:
        ValueError: an unknown key (named, with the known ones) or a value of the wrong type.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{what} settings must be a mapping of {cls.__name__} fields, got {type(d).__name__}")
    types = field_types(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {', '.join(sorted(types))}")
    return cls(**{k: convert(k, v, types[k]) for k, v in d.items()})


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`["lr=1e-3", "betas=[0.9, 0.98]"]` -> `{"lr": "1e-3" as YAML reads it, ...}`.

    Raises:
        ValueError: an item without `=` or with a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {key.strip()}: {value!r} is not a YAML value ({_yaml_problem(e)})") from None
    return out


def read_text(path: Union[str, Path], what: str = "text") -> str:
    """A UTF-8 text file's contents.

    Raises:
        ValueError: unreadable or not UTF-8; one line naming the file (Python's own
            `'utf-8' codec can't decode byte 0xff` names none).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 {what} file (byte {e.start} cannot be decoded)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None


def read_json(path: Union[str, Path], kind: type = dict) -> Any:
    """A JSON file holding a `kind` (a dict: an object).

    Raises:
        ValueError: unreadable, not UTF-8, not JSON, or not a `kind`; one line naming the file.
    """
    try:
        d = json.loads(read_text(path, "JSON"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, kind):
        expected = "an object" if kind is dict else f"a {kind.__name__}"
        raise ValueError(f"{path}: expected {expected} in JSON, found {type(d).__name__}")
    return d


def read_mapping(path: Union[str, Path]) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping).

    Raises:
        ValueError: unreadable, not UTF-8, not YAML, or not a mapping; one line naming the file.
    """
    text = read_text(path, "text (YAML)")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a YAML mapping of settings, found {type(d).__name__}")
    return d


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line from a YAML error: the problem and where (PyYAML's message spans several lines)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def dump(d: dict[str, Any]) -> str:
    """YAML in field order, for `config.yaml` and `--print-config`."""
    return yaml.safe_dump(d, sort_keys=False)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libsndfile's and torch's can span several), or its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
