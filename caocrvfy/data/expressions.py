"""Arithmetic captcha labels: `a OP b` plus what the site asks (`=?`), such as `14+27=?`.

    caocrvfy generate --arithmetic --operands 0-20 --operators +-x --ask "=?"

`ExpressionSpec` says what the expressions hold; its text form ("0-20 +-x =?") travels in
`CaptchaSpec.arithmetic` and the folder's manifest. Subtractions never go below zero and
divisions are exact, as on the sites that use them. The answer is `caocrvfy.inference.arithmetic`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPERATORS = "+-x*/"
ASKS = ("", "=", "=?", "?")
DEFAULT_OPERANDS, DEFAULT_OPERATORS, DEFAULT_ASK = (0, 20), "+-x", "=?"


@dataclass(frozen=True)
class ExpressionSpec:
    low: int = DEFAULT_OPERANDS[0]
    high: int = DEFAULT_OPERANDS[1]
    operators: str = DEFAULT_OPERATORS
    ask: str = DEFAULT_ASK

    def __post_init__(self):
        if not 0 <= self.low <= self.high <= 9999:
            raise ValueError(f"operands {self.low}-{self.high}: give a range such as 0-20 within 0-9999")
        if not self.operators or set(self.operators) - set(OPERATORS) or len(set(self.operators)) != len(self.operators):
            raise ValueError(f"operators {self.operators!r}: choose some of {OPERATORS!r}, each once")
        if "/" in self.operators and self.high < 1:
            raise ValueError("division needs operands above 0")
        if self.ask not in ASKS:
            raise ValueError(f"ask {self.ask!r}: one of {', '.join(repr(a) for a in ASKS)}")

    @classmethod
    def parse(cls, text: str) -> ExpressionSpec:
        """From the text form "LOW-HIGH OPERATORS [ASK]"."""
        parts = text.split()
        try:
            low, high = (int(v) for v in parts[0].split("-", 1))
            return cls(low, high, parts[1], parts[2] if len(parts) > 2 else "")
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{text!r} is not an arithmetic spec such as '0-20 +-x =?' ({exc})") from exc

    def text(self) -> str:
        return f"{self.low}-{self.high} {self.operators} {self.ask}".strip()

    @property
    def charset(self) -> str:
        return "".join(sorted(set("0123456789" + self.operators + self.ask)))

    @property
    def lengths(self) -> tuple[int, int]:
        """The shortest and the longest expression."""
        return 3 + len(self.ask), 2 * len(str(self.high)) + 1 + len(self.ask)

    def random(self, rng: np.random.Generator) -> str:
        op = str(rng.choice(list(self.operators)))
        a, b = (int(v) for v in rng.integers(self.low, self.high + 1, 2))
        if op == "-" and a < b:
            a, b = b, a
        elif op == "/":
            b = int(rng.integers(max(self.low, 1), self.high + 1))
            quotients = [q for q in range(self.high // b + 1) if self.low <= q * b <= self.high]
            a = b * int(rng.choice(quotients)) if quotients else b
        return f"{a}{op}{b}{self.ask}"

    def labels(self, count: int, rng: np.random.Generator | None = None) -> list[str]:
        rng = rng or np.random.default_rng()
        return [self.random(rng) for _ in range(count)]
