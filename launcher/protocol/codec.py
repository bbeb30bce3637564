"""Frozen dataclasses <-> plain JSON values, checked against their type hints (stdlib only).

The protocol's messages and the node's run-directory files go through here, so that
what one side writes the other reads as a typed record, never by string keys.
Supported field types: bool, int, float, str, None, ``X | None``, ``Literal[...]``,
``list[X]``, ``dict[str, X]``, NamedTuples (as JSON arrays) and nested dataclasses. It runs on
Python 3.9 as well (the node side does), where ``X | None`` is read as ``Union[X, None]``.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")
# ``X | None`` is a types.UnionType from Python 3.10 on; the node side runs on 3.9 too.
_UNIONS: tuple[Any, ...] = (Union, getattr(types, "UnionType", Union))


class ProtocolError(ValueError):
    """A value that does not have the shape its type says."""


def to_wire(message: Any) -> Any:
    """A message as plain JSON values (dataclasses become objects, NamedTuples lists)."""
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return {f.name: to_wire(getattr(message, f.name)) for f in dataclasses.fields(message)}
    if isinstance(message, (tuple, list)):
        return [to_wire(item) for item in message]
    if isinstance(message, dict):
        return {key: to_wire(value) for key, value in message.items()}
    return message


def decode(cls: type[T], data: Any) -> T:
    """Check ``data`` (decoded JSON) against message type ``cls`` and build it.

    Unknown fields are ignored (a newer peer may add some); a missing field without a
    default, or a value of the wrong type, raises ProtocolError naming the field.
    Each type's checks are put together once, at its first decode, and the path of a
    bad value is spelled out only when there is one: 600,000 log records decode in
    about a second, not ten.
    """
    try:
        return typing.cast(T, _decoder(cls)(data))
    except _Bad as bad:
        raise ProtocolError(f"{cls.__name__}{bad.path}: {bad.message}") from None


class _Bad(Exception):
    """A bad value, ``path`` below the message (``.field[3].name``), built on the way up."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


Decoder = typing.Callable[[Any], Any]
_DECODERS: dict[Any, Decoder] = {}


def _decoder(hint: Any) -> Decoder:
    """The checking constructor of ``hint``, made once."""
    found = _DECODERS.get(hint)
    if found is None:
        found = _DECODERS[hint] = _make(hint)
    return found


def _make(hint: Any) -> Decoder:
    origin = typing.get_origin(hint)
    if hint is Any:
        return lambda value: value
    if origin in _UNIONS:
        return _union(typing.get_args(hint))
    if origin is Literal:
        allowed = typing.get_args(hint)

        def literal(value: Any) -> Any:
            if value not in allowed:
                raise _Bad(f"{value!r} is none of {allowed}")
            return value

        return literal
    if origin is list:
        return _list(_decoder(typing.get_args(hint)[0]))
    if origin is dict:
        return _dict(_decoder(typing.get_args(hint)[1]))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass(hint)
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        return _named_tuple(hint)
    if hint is float:

        def number(value: Any) -> float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise _Bad(f"expected a number, got {_kind(value)}")

        return number
    if hint in (int, str, bool):

        def simple(value: Any) -> Any:
            if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
                return value
            raise _Bad(f"expected {hint.__name__}, got {_kind(value)}")

        return simple
    raise TypeError(f"no wire form for {hint!r}")  # a bug in a message definition


def _union(options: tuple[Any, ...]) -> Decoder:
    may_be_none = type(None) in options
    decoders = [_decoder(option) for option in options if option is not type(None)]

    def union(value: Any) -> Any:
        if value is None and may_be_none:
            return None
        for one in decoders:
            try:
                return one(value)
            except _Bad:
                continue
        raise _Bad(f"unexpected {_kind(value)}")

    return union


def _list(item: Decoder) -> Decoder:
    def items(value: Any) -> list[Any]:
        try:
            return [item(v) for v in _expect(list, value)]
        except _Bad as bad:
            if not isinstance(value, list):
                raise
            for i, v in enumerate(value):  # the first bad item, for its index
                try:
                    item(v)
                except _Bad as at:
                    raise _Bad(at.message, f"[{i}]{at.path}") from None
            raise bad from None

    return items


def _dict(item: Decoder) -> Decoder:
    def entries(value: Any) -> dict[str, Any]:
        decoded = {}
        for key, v in _expect(dict, value).items():
            try:
                decoded[str(key)] = item(v)
            except _Bad as bad:
                raise _Bad(bad.message, f".{key}{bad.path}") from None
        return decoded

    return entries


def _dataclass(cls: type[Any]) -> Decoder:
    fields: list[tuple[str, Decoder, bool]] = []

    def instance(value: Any) -> Any:
        if not fields:  # its fields' types are resolved at its first decode, not at import
            hints = _hints(cls)
            fields[:] = [
                (f.name, _decoder(hints[f.name]), f.default is f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(cls)
            ]
        given = _expect(dict, value)
        values = {}
        for name, field, required in fields:
            if name in given:
                try:
                    values[name] = field(given[name])
                except _Bad as bad:
                    raise _Bad(bad.message, f".{name}{bad.path}") from None
            elif required:
                raise _Bad(f"missing field {name!r}")
        return cls(**values)

    return instance


def _named_tuple(cls: type[Any]) -> Decoder:
    fields: list[tuple[str, Decoder]] = []

    def instance(value: Any) -> Any:
        if not fields:
            hints = _hints(cls)
            fields[:] = [(name, _decoder(hints[name])) for name in cls._fields]
        items = _expect(list, value)
        if len(items) != len(fields):
            raise _Bad(f"expected {len(fields)} items, got {len(items)}")
        try:
            return cls(*[field(v) for (_, field), v in zip(fields, items)])
        except _Bad:
            for (name, field), v in zip(fields, items):
                try:
                    field(v)
                except _Bad as at:
                    raise _Bad(at.message, f".{name}{at.path}") from None
            raise

    return instance


def _expect(kind: type[T], value: Any) -> T:
    if not isinstance(value, kind):
        raise _Bad(f"expected a JSON {'array' if kind is list else 'object'}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS:
        namespace = vars(sys.modules[cls.__module__])
        try:
            _HINTS[cls] = typing.get_type_hints(cls, namespace)
        except TypeError:  # Python 3.9 cannot evaluate ``X | None``: read it as Union[X, None]
            _HINTS[cls] = {
                name: _evaluate(hint, namespace)
                for klass in reversed(cls.__mro__)
                for name, hint in vars(klass).get("__annotations__", {}).items()
            }
    return _HINTS[cls]


def _evaluate(hint: Any, namespace: dict[str, Any]) -> Any:
    """A string annotation evaluated with each ``a | b`` read as ``Union[a, b]`` (a NamedTuple's
    come as ForwardRefs on 3.9)."""
    if isinstance(hint, typing.ForwardRef):
        hint = hint.__forward_arg__
    if not isinstance(hint, str):
        return hint
    tree = _UnionsSpelledOut().visit(ast.parse(hint, mode="eval"))
    code = compile(ast.fix_missing_locations(tree), f"<annotation {hint}>", "eval")
    return eval(code, {**namespace, "_Union": Union})  # our own message definitions, never input


class _UnionsSpelledOut(ast.NodeTransformer):
    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.op, ast.BitOr):
            return node
        union = ast.Name(id="_Union", ctx=ast.Load())
        pair = ast.Tuple(elts=[node.left, node.right], ctx=ast.Load())
        return ast.Subscript(value=union, slice=pair, ctx=ast.Load())
