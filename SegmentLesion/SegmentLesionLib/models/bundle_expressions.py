"""``$`` expressions of a Model Zoo bundle read with :mod:`ast`, and the values they (and references) can give.

An expression is never evaluated: :class:`ExpressionReader` parses it and works its value out node by node, from
allow-listed forms only (literals, references, arithmetic, comparisons and conditionals on them, ``torch.device``
as the host's device, allow-listed MONAI classes with literal arguments, the label-mapping lambdas of
:class:`RegionsToLabels`). Anything else raises a :class:`~SegmentLesionLib.errors.ModelError` quoting it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ModelError

if TYPE_CHECKING:
    from .bundle_config import BundleParser

REFERENCE = re.compile(r"@[\w]*(?:(?:::|#)\w*)*")  # MONAI's reference syntax, ``#`` or ``::`` between parts
_MAX_SEQUENCE = 10_000  # longest list or string an expression may build
_MAX_EXPRESSION = 4_000  # longest expression read (the published bundles' longest is about 120 characters)
# Writers: the host writes its own outputs, so these are dropped from the post-processing unread (and never built).
WRITER_TRANSFORMS = frozenset({"SaveImaged", "SaveImage"})


def normalize_id(ref: str) -> str:
    """MONAI's id form: ``#`` (the old separator) as ``::``."""
    return ref.replace("#", "::")


def short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class HostDevice:
    """Where the bundle says "the device": the host's own device (``torch.device(...)``, ``@device``)."""

    def __repr__(self) -> str:
        return "HOST_DEVICE"


HOST_DEVICE = HostDevice()


@dataclass(frozen=True)
class RegionsToLabels:
    """A label-mapping lambda as data: overlapping region channels to one labelmap.

    ``lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))`` is
    ``RegionsToLabels(rules=((2, 4), (0, 1), (1, 2)), default=0)``: the first rule whose channel is set wins.
    """

    rules: tuple[tuple[int, int], ...]  # (channel, label value), first match wins
    default: int = 0

    def by_label(self) -> list[tuple[int, int]]:
        """``(label value, channel)`` pairs in label-value order: the model's label order (BraTS: (1, 0), (2, 1), (4, 2))."""
        return sorted((value, channel) for channel, value in self.rules)


@dataclass(eq=False)
class Component:
    """An allow-listed MONAI object to construct: class name, kind and its (resolved) arguments.

    ``eq=False``: identity matters (``@preprocessing`` in ``Invertd`` is the same object as the preprocessing).
    """

    name: str
    kind: str  # "transform" or "inferer"
    args: dict[str, Any]
    where: str

    def transforms(self) -> list[Component]:
        """The chained transforms of a ``Compose`` (empty for anything else)."""
        items = self.args.get("transforms", []) if self.name == "Compose" else []
        return [item for item in items if isinstance(item, Component)]


class ExpressionReader:
    """One ``$`` expression: parsed with :mod:`ast`, its value worked out node by node from allow-listed forms."""

    def __init__(self, parser: BundleParser, text: str, where: str) -> None:
        self.parser = parser
        self.text = text
        self.where = where
        self.names: dict[str, str] = {}  # placeholder name -> reference id

    def refuse(self, detail: str) -> ModelError:
        return self.parser.refuse(self.where, f"the expression {short(self.text)!r} is not an allow-listed form ({detail})")

    def value(self) -> Any:
        if len(self.text) > _MAX_EXPRESSION:
            raise self.refuse(f"longer than {_MAX_EXPRESSION} characters")
        try:
            return self._value()
        except RecursionError as exc:
            raise self.refuse("nested too deeply") from exc

    def _value(self) -> Any:
        source = self.text[1:]
        refs = sorted(set(REFERENCE.findall(normalize_id(source))), key=len, reverse=True)
        source = normalize_id(source)
        for index, ref in enumerate(refs):
            placeholder = f"__ref{index}__"
            self.names[placeholder] = ref[1:]
            source = source.replace(ref, placeholder)
        if source.lstrip().startswith("import ") or source.lstrip().startswith("from "):
            raise self.refuse("import statement")
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise self.refuse(f"not a Python expression: {exc.msg}") from exc
        return self.node(tree.body)

    # --- nodes ----------------------------------------------------------------------------------------------

    def node(self, node: ast.AST) -> Any:
        handler: Callable[[Any], Any] | None = getattr(self, f"_{type(node).__name__}", None)
        if handler is None:
            raise self.refuse(f"{type(node).__name__} is not allowed")
        return handler(node)

    def _Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        raise self.refuse(f"constant {node.value!r}")

    def _List(self, node: ast.List) -> list[Any]:
        return [self.node(item) for item in node.elts]

    _Tuple = _List

    def _Dict(self, node: ast.Dict) -> dict[Any, Any]:
        if any(key is None for key in node.keys):
            raise self.refuse("dict unpacking")
        return {self.node(key): self.node(value) for key, value in zip(node.keys, node.values)}

    def _Name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self.parser.resolve(self.names[node.id], self.where)
        raise self.refuse(f"name {node.id!r}")

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.node(node.operand)
        if isinstance(node.op, ast.Not):
            return not _plain(self, operand)
        if isinstance(node.op, (ast.USub, ast.UAdd)) and _is_number(operand):
            return -operand if isinstance(node.op, ast.USub) else +operand
        raise self.refuse(f"{type(node.op).__name__} on {type(operand).__name__}")

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.node(node.left), self.node(node.right)
        op = node.op
        if _is_number(left) and _is_number(right):
            if isinstance(op, ast.Add):
                return left + right
            if isinstance(op, ast.Sub):
                return left - right
            if isinstance(op, ast.Mult):
                return left * right
            if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)):
                if right == 0:
                    raise self.refuse("division by zero")
                return left / right if isinstance(op, ast.Div) else (left // right if isinstance(op, ast.FloorDiv) else left % right)
        if isinstance(op, ast.Add) and type(left) is type(right) and isinstance(left, (str, list)):
            if len(left) + len(right) > _MAX_SEQUENCE:
                raise self.refuse("result too long")
            return left + right
        if isinstance(op, ast.Mult) and isinstance(left, (str, list)) and isinstance(right, int) and not isinstance(right, bool):
            if len(left) * max(right, 0) > _MAX_SEQUENCE:  # ``[0] * 10**9`` would exhaust memory
                raise self.refuse("result too long")
            return left * right
        raise self.refuse(f"{type(op).__name__} on {type(left).__name__} and {type(right).__name__}")

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        values = [_plain(self, self.node(item)) for item in node.values]
        result = values[0]
        for item in values[1:]:
            result = (result and item) if isinstance(node.op, ast.And) else (result or item)
        return result

    def _Compare(self, node: ast.Compare) -> bool:
        operators = {
            ast.Eq: lambda a, b: a == b,
            ast.NotEq: lambda a, b: a != b,
            ast.Lt: lambda a, b: a < b,
            ast.LtE: lambda a, b: a <= b,
            ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b,
            ast.Is: lambda a, b: a is b,
            ast.IsNot: lambda a, b: a is not b,
            ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b,
        }
        left = _plain(self, self.node(node.left))
        for op, comparator in zip(node.ops, node.comparators):
            right = _plain(self, self.node(comparator))
            try:
                if not operators[type(op)](left, right):
                    return False
            except TypeError as exc:
                raise self.refuse(f"cannot compare {type(left).__name__} and {type(right).__name__}") from exc
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:
        # Both branches must be allowed forms, whichever is taken.
        body, orelse = self.node(node.body), self.node(node.orelse)
        return body if _plain(self, self.node(node.test)) else orelse

    def _Subscript(self, node: ast.Subscript) -> Any:
        container = self.node(node.value)
        index = self.node(node.slice)
        if isinstance(container, (list, str)) and isinstance(index, int) and not isinstance(index, bool):
            if -len(container) <= index < len(container):
                return container[index]
            raise self.refuse(f"index {index} out of range")
        if isinstance(container, dict) and index in container:
            return container[index]
        raise self.refuse("subscript of a value that is not a list or dict of data")

    def _Call(self, node: ast.Call) -> Any:
        dotted = _dotted_name(node.func)
        if dotted == "torch.device" and len(node.args) == 1 and not node.keywords and self._device_argument(node.args[0]):
            return HOST_DEVICE
        if dotted and dotted.startswith("monai.") and not node.args:
            name, kind = self.parser.target_name(dotted, self.where)
            if name in WRITER_TRANSFORMS or name == "Compose":
                raise self.refuse(f"{name} cannot be built in an expression")
            args = {keyword.arg: self._literal(keyword.value) for keyword in node.keywords if keyword.arg is not None}
            if len(args) != len(node.keywords):
                raise self.refuse("keyword unpacking")
            return self.parser.make_component(name, kind, args, self.where)
        shown = dotted
        for placeholder, ref in self.names.items():
            shown = shown.replace(placeholder, f"@{ref}") if shown else shown
        raise self.refuse(f"call of {shown or 'a computed function'!r}")

    def _Lambda(self, node: ast.Lambda) -> RegionsToLabels:
        mapping = _regions_to_labels(node)
        if mapping is None:
            raise self.refuse("lambda that is not a known label mapping")
        return mapping

    # --- helpers --------------------------------------------------------------------------------------------

    def _literal(self, node: ast.AST) -> Any:
        value = self.node(node)
        if isinstance(value, (Component, RegionsToLabels, HostDevice)):
            raise self.refuse("a MONAI class in an expression takes literal arguments only")
        return value

    def _device_argument(self, node: ast.AST) -> bool:
        """``'cpu'``, ``'cuda:0'``... or ``'cuda...' if torch.cuda.is_available() else 'cpu'``."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return True
        return (
            isinstance(node, ast.IfExp)
            and isinstance(node.test, ast.Call)
            and _dotted_name(node.test.func) == "torch.cuda.is_available"
            and not node.test.args
            and not node.test.keywords
            and all(isinstance(n, ast.Constant) and isinstance(n.value, str) for n in (node.body, node.orelse))
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(reader: ExpressionReader, value: Any) -> Any:
    if isinstance(value, (Component, RegionsToLabels, HostDevice)):
        raise reader.refuse("an operation on a component")
    return value


def _dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _int_constant(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def _regions_to_labels(node: ast.Lambda) -> RegionsToLabels | None:
    """Match ``lambda x: torch.where(x[[c]] > 0, v, <the same form, or an integer>)``."""
    args = node.args
    if len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs or args.defaults:
        return None
    variable = args.args[0].arg
    rules: list[tuple[int, int]] = []
    body = node.body
    while True:
        default = _int_constant(body)
        if default is not None:
            return RegionsToLabels(tuple(rules), default) if rules else None
        if not (isinstance(body, ast.Call) and _dotted_name(body.func) == "torch.where" and len(body.args) == 3 and not body.keywords):
            return None
        condition, value_node, rest = body.args
        channel = _channel_test(condition, variable)
        value = _int_constant(value_node)
        if channel is None or value is None:
            return None
        rules.append((channel, value))
        body = rest


def _channel_test(node: ast.AST, variable: str) -> int | None:
    """The channel ``c`` of ``x[[c]] > 0``."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Gt)):
        return None
    if _int_constant(node.comparators[0]) != 0:
        return None
    subscript = node.left
    if not (isinstance(subscript, ast.Subscript) and isinstance(subscript.value, ast.Name) and subscript.value.id == variable):
        return None
    index = subscript.slice
    if isinstance(index, ast.List) and len(index.elts) == 1:
        return _int_constant(index.elts[0])
    return None
