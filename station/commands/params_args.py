"""Command-line options derived from a procedure's parameter set (:mod:`station.params`).

Each field becomes an option: its flag (the field's :class:`~station.params.Cli` metadata, else
``--field-name``), type, default and help (the field's description and default) come from the
model, and the values given are validated by the model itself, so the command line, a job file
and the docs take the same values with the same defaults and refuse the same ones."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from station.errors import LimitError
from station.params import cli_flag, cli_of, error_message, model_fields

T = TypeVar("T")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}") from None


def _scalar(annotation: Any) -> Any:
    """The type a value of the field is read as: float, int, str, or a list of floats."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return _floats
    return annotation


def _help(info: FieldInfo) -> str:
    text = (info.description or "").replace("%", "%%")
    d = info.default
    if cli_of(info).required:
        return text
    if d is True:
        return f"switch off: {text} (on by default)"
    if d is None or isinstance(d, bool):
        return text
    return f"{text} (default {d:g})" if isinstance(d, float) else f"{text} (default {d})"


def add_params_args(p: argparse.ArgumentParser, model: type[Any], title: str) -> None:
    """Add an option for every field of ``model`` that has one (a nested parameter set has
    none), in an argument group ``title``; the destination of each is the field's name."""
    group = p.add_argument_group(title)
    choices: dict[str, argparse._MutuallyExclusiveGroup] = {}
    fields = model_fields(model)
    for name, info in fields.items():
        flag = cli_flag(name, info)
        if flag is None:
            continue
        cli = cli_of(info)
        target: Any = group
        if cli.group is not None:
            if cli.group not in choices:
                choices[cli.group] = group.add_mutually_exclusive_group(required=True)
            target = choices[cli.group]
        if info.annotation is bool:
            target.add_argument(flag, dest=name, default=info.default, help=_help(info),
                                action="store_false" if info.default else "store_true")
            continue
        kw: dict[str, Any] = {"required": True} if cli.required else {"default": info.default}
        target.add_argument(flag, dest=name, type=_scalar(info.annotation), metavar=cli.metavar,
                            help=_help(info), **kw)


def params_from_args(model: type[T], args: argparse.Namespace) -> T:
    """The parameter set given on the command line; a value the model refuses raises
    :class:`LimitError` naming its option and what it takes."""
    fields = model_fields(model)
    given = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    try:
        return model(**given)
    except ValidationError as e:
        raise LimitError(describe(e, fields)) from None


def describe(e: ValidationError, fields: dict[str, FieldInfo]) -> str:
    """A model's refusal in the command line's words: each error as ``--flag (field): why``."""
    out = []
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        msg = error_message(err)
        flag = cli_flag(name, fields[name]) if name in fields else None
        out.append(f"{flag} ({name}): {msg}" if flag else f"{name}: {msg}" if name else msg)
    return "; ".join(out)
