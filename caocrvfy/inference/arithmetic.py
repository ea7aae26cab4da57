"""Arithmetic captchas: the answer to a reading such as `14+27=?`, from a small parser (never
`eval`). Whole numbers, `+ - x X * × / ÷` with the usual precedence, left to right; an `=`,
`=?` or `?` at the end is what the site asks and is dropped. Exact arithmetic (fractions): an
answer is a whole number, or a decimal when a division leaves one."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

from caocrvfy.errors import DataError

MULTIPLY, DIVIDE, ADD, SUBTRACT = "x X * ×", "/ ÷", "+", "-"
OPERATOR_CHARS = "".join((MULTIPLY + DIVIDE + ADD + SUBTRACT).split())
MAX_EXPRESSION_CHARS = 64
MAX_DIGITS = 9  # per number: keeps products small
_TOKEN = re.compile(r"\d+|[" + re.escape(OPERATOR_CHARS) + "]")


class ExpressionError(DataError):
    """A reading that is not an arithmetic expression; the message says why."""


def _tokens(text: str) -> list[str]:
    body = text.strip().replace(" ", "")
    body = re.sub(r"=?\??$", "", body)
    if not body:
        raise ExpressionError(f"{text!r} holds no expression")
    if len(body) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"{text[:20]!r}... is longer than {MAX_EXPRESSION_CHARS} characters")
    tokens, at = [], 0
    for match in _TOKEN.finditer(body):
        if match.start() != at:
            break
        tokens.append(match.group())
        at = match.end()
    if at != len(body):
        raise ExpressionError(f"{text!r} is not an expression: {body[at]!r} is neither a digit nor an operator")
    return tokens


def solve_exact(text: str) -> Fraction:
    """The value of `text` as an exact fraction; ExpressionError saying what is wrong."""
    tokens = _tokens(text)
    numbers, operators = tokens[0::2], tokens[1::2]
    if any(not n.isdigit() for n in numbers) or any(o.isdigit() for o in operators) or len(tokens) % 2 == 0:
        raise ExpressionError(f"{text!r} is not an expression: numbers and operators must alternate, "
                              "starting and ending with a number")
    if any(len(n) > MAX_DIGITS for n in numbers):
        raise ExpressionError(f"{text!r} has a number of more than {MAX_DIGITS} digits")
    # Multiplications and divisions first, left to right, then additions and subtractions.
    terms, signs = [Fraction(int(numbers[0]))], []
    for op, number in zip(operators, numbers[1:]):
        value = Fraction(int(number))
        if op in MULTIPLY:
            terms[-1] *= value
        elif op in DIVIDE:
            if value == 0:
                raise ExpressionError(f"{text!r} divides by zero")
            terms[-1] /= value
        else:
            signs.append(op)
            terms.append(value)
    total = terms[0]
    for sign, term in zip(signs, terms[1:]):
        total = total + term if sign == ADD else total - term
    return total


def answer_text(value: Fraction) -> str:
    """A whole number as digits; anything else as a decimal of up to 6 places."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def expression_automaton(charset: str) -> tuple[np.ndarray, np.ndarray]:
    """What `solve` accepts from a reader that does not read spaces, as a finite automaton over
    the classes of `charset` (for `ctc_best_path_accepted`): numbers alternating with operators,
    at least one operator, then `=`, `=?`, `?` or nothing. Returns (delta, accepting); a bare
    number, which `solve` takes as an answer, is not accepted: a captcha shows an expression."""
    start, first_number, operator, number, equals, question = range(6)
    delta = np.full((6, len(charset)), -1, np.int64)
    for c, char in enumerate(charset):
        if char.isdigit():
            delta[[start, first_number, operator, number], c] = [first_number, first_number, number, number]
        elif char in OPERATOR_CHARS:
            delta[[first_number, number], c] = operator
        elif char == "=":
            delta[number, c] = equals
        elif char == "?":
            delta[[number, equals], c] = question
    accepting = np.zeros(6, bool)
    accepting[[number, equals, question]] = True
    return delta, accepting


def solve(text: str) -> str:
    """The answer a site wants for the expression `text` (`14+27=?` -> `41`)."""
    return answer_text(solve_exact(text))


def answer_or_error(text: str) -> dict:
    """{"answer": ...} for a reading that is an expression, else {"error": why it has none}: one
    image's entry in a batch that goes on (`predict --solve`, `serve` with `?solve=1`)."""
    try:
        return {"answer": solve(text)}
    except ExpressionError as exc:
        return {"error": f"the reading {exc}; no answer"}
