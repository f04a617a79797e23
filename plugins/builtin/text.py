"""Postprocess steps: evaluate arithmetic captchas, fold case, map look-alike characters.

``arithmetic`` parses the text with a small tokenizer and a two-level precedence parser; no
``eval`` is involved, and anything that is not ``number (operator number)+`` with an optional
trailing ``=`` / ``=?`` is not evaluated.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from capserve.plugins.hookspecs import hookimpl
from capserve.core.steps import Param, Step

OPERATORS = {
    "+": "+", "＋": "+", "加": "+",
    "-": "-", "−": "-", "–": "-", "—": "-", "－": "-", "减": "-",
    "*": "*", "x": "*", "X": "*", "×": "*", "✕": "*", "·": "*", "＊": "*", "乘": "*",
    "/": "/", "÷": "/", "／": "/", "除": "/",
}  # fmt: skip
"""Operator characters a model may read, by what they mean (ASCII, typographic, Chinese)."""

_TRAILER = re.compile(r"\s*(?:=|＝|等于)\s*[?？]?\s*$|\s*[?？]\s*$")
_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


class ExpressionError(ValueError):
    """Text that is not an arithmetic expression this step evaluates."""


def _tokens(text: str) -> list[object]:
    out: list[object] = []
    for number, other in _TOKEN.findall(text.strip()):
        if number:
            out.append(int(number))
        elif other in OPERATORS:
            out.append(OPERATORS[other])
        elif not other.isspace():
            raise ExpressionError(f"unexpected character {other!r}")
    return out


def evaluate(text: str) -> Fraction:
    """The value of ``12+7``, ``8x3``, ``9-4``, ``6÷2``, ``3+4*2``, ``-2+5``, ``7加8等于?``, ...

    Multiplication and division bind tighter than addition and subtraction; otherwise left to
    right. Integers only (a model reads digits); division is exact (a ``Fraction``).
    """
    body = _TRAILER.sub("", text, count=1)
    tokens = _tokens(body)
    if not tokens:
        raise ExpressionError("no expression")
    position = 0

    def operand() -> Fraction:
        nonlocal position
        sign = 1
        while position < len(tokens) and tokens[position] in ("+", "-"):
            sign = -sign if tokens[position] == "-" else sign
            position += 1
        if position >= len(tokens) or not isinstance(tokens[position], int):
            raise ExpressionError("expected a number")
        value = Fraction(tokens[position]) * sign
        position += 1
        return value

    def term() -> Fraction:
        nonlocal position
        value = operand()
        while position < len(tokens) and tokens[position] in ("*", "/"):
            op = tokens[position]
            position += 1
            right = operand()
            if op == "*":
                value *= right
            elif right == 0:
                raise ExpressionError("division by zero")
            else:
                value /= right
        return value

    value = term()
    operators = 0
    while position < len(tokens):
        op = tokens[position]
        if op not in ("+", "-"):
            raise ExpressionError(f"unexpected {op!r}")
        position += 1
        right = term()
        value = value + right if op == "+" else value - right
        operators += 1
    if operators == 0 and len([t for t in tokens if isinstance(t, int)]) < 2:
        raise ExpressionError("no operator: a lone number is not an expression")
    return value


def format_number(value: Fraction, decimals: int = 2) -> str:
    """An integer as its digits; otherwise a decimal rounded to ``decimals`` places, trailing zeros cut."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def arithmetic(text: str, confidences: tuple[float, ...], *, on_error: str = "keep", decimals: int = 2) -> str:
    """Replace an arithmetic expression (``12+7=?``) by its value (``19``).

    Text that does not parse is returned unchanged (``on_error: keep``) or as ``""`` (``empty``).
    """
    try:
        return format_number(evaluate(text), decimals)
    except ExpressionError:
        return text if on_error == "keep" else ""


def case(text: str, confidences: tuple[float, ...], *, mode: str = "lower") -> str:
    """``lower``, ``upper`` or ``casefold`` the text."""
    if mode == "lower":
        return text.lower()
    if mode == "upper":
        return text.upper()
    return text.casefold()


@functools.lru_cache(maxsize=256)
def _translator(mapping: tuple[tuple[str, str], ...]):
    if all(len(key) == 1 for key, _ in mapping):
        table = str.maketrans(dict(mapping))
        return lambda text: text.translate(table)
    lookup = dict(mapping)
    pattern = re.compile("|".join(re.escape(key) for key in sorted(lookup, key=len, reverse=True)))
    return lambda text: pattern.sub(lambda m: lookup[m.group(0)], text)


def map_chars(text: str, confidences: tuple[float, ...], *, mapping: tuple[tuple[str, str], ...]) -> str:
    """Replace look-alikes: each key of ``mapping`` by its value, in one pass (``rn`` -> ``m`` works;
    longer keys win over shorter ones)."""
    return _translator(mapping)(text)


@hookimpl
def register_postprocess_steps():
    return [
        Step(
            "arithmetic",
            arithmetic,
            (
                Param("on_error", "str", default="keep", choices=("keep", "empty"),
                      help="what text that is not an expression becomes"),
                Param("decimals", "int", default=2, min=0, max=10, help="for a division that is not whole"),
            ),
            "Evaluate an arithmetic captcha (12+7, 8x3, 9-4, 6÷2, optional =?) to its answer; no eval.",
        ),
        Step(
            "case",
            case,
            (Param("mode", "str", default="lower", choices=("lower", "upper", "casefold")),),
            "Fold the text to lower or upper case.",
        ),
        Step(
            "map_chars",
            map_chars,
            (Param("mapping", "dict[str]", help="look-alike -> replacement, e.g. {O: '0', l: '1'}"),),
            "Replace look-alike characters (or strings) by the ones the site expects.",
        ),
    ]
