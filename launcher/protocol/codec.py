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
    """
    return typing.cast(T, _decode(cls, data, cls.__name__))


def _decode(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in _UNIONS:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _decode(option, value, where)
            except ProtocolError:
                continue
        raise ProtocolError(f"{where}: unexpected {_kind(value)}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ProtocolError(f"{where}: {value!r} is none of {typing.get_args(hint)}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(_expect(list, value, where))]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {str(k): _decode(item, v, f"{where}.{k}") for k, v in _expect(dict, value, where).items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        fields = _expect(dict, value, where)
        hints = _hints(hint)
        values = {}
        for f in dataclasses.fields(hint):
            if f.name in fields:
                values[f.name] = _decode(hints[f.name], fields[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: missing field {f.name!r}")
        return hint(**values)
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        items = _expect(list, value, where)
        hints = _hints(hint)
        if len(items) != len(hint._fields):
            raise ProtocolError(f"{where}: expected {len(hint._fields)} items, got {len(items)}")
        return hint(*(_decode(hints[n], v, f"{where}.{n}") for n, v in zip(hint._fields, items)))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ProtocolError(f"{where}: expected a number, got {_kind(value)}")
    if hint in (int, str, bool):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ProtocolError(f"{where}: expected {hint.__name__}, got {_kind(value)}")
    raise TypeError(f"{where}: no wire form for {hint!r}")  # a bug in a message definition


def _expect(kind: type[T], value: Any, where: str) -> T:
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}: expected a JSON {'array' if kind is list else 'object'}, got {_kind(value)}")
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
    """A string annotation evaluated with each ``a | b`` read as ``Union[a, b]``."""
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
