"""Input generators shared by the fuzz surfaces: strings, JSON values, mutations, tokens.

Everything draws from one seeded :class:`random.Random`, so that a run is reproducible
with ``--seed`` (for the same server answers: what a surface sends next may depend on
what the server said, e.g. a consultation id it handed out). Generation is plain Python,
fast enough for 100,000 inputs a surface; the grammars are the message shapes of
:mod:`signalling.protocol`, SDP as aiortc and browsers write it, RTP/RTCP/STUN/DTLS
headers and the REST routes' bodies.
"""

from __future__ import annotations

import base64
import json
import random
import string
import time
from typing import Any, Callable, Sequence

import jwt

from bench.rtc import KEY
from config.settings import AuthSettings

NONE_HEADER = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
AUDIENCE = AuthSettings().audience
ISSUER = AuthSettings().issuer

# Strings that have broken parsers, loggers, file paths and databases before.
NASTY_STRINGS: tuple[str, ...] = (
    "", " ", "\t\n", "\x00", "null", "undefined", "NaN", "-1", "0", "1e309", "9" * 40, "true",
    "../../../../etc/passwd", "..\\..\\windows", "%2e%2e%2f%2e%2e%2f", "/", "//", "a/b", "%00", "%",
    "'; DROP TABLE consultations;--", "\" OR 1=1 --", "${jndi:ldap://127.0.0.1/x}", "{{7*7}}", "%s%s%s%n",
    "<script>alert(1)</script>", "\u202e\u0644\u0639", "\U0001f600" * 8, "\ufeff", "\ud800", "\udfff",
    "é" * 70, "CON", "nul.txt", "a" * 65, "a" * 257, "x\r\nSet-Cookie: a=b", "\x1b[31mred", "\\u0000",
    "🩺", "Ω≈ç√", "０１２", "tc:", "*", "?", "#", "~", "*" * 64,
)


class Grammar:
    """Seeded generators of values and mutations."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- scalars ------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.rng.randrange(len(items))]

    def ident(self, lo: int = 1, hi: int = 24) -> str:
        return "".join(self.rng.choice(string.ascii_lowercase + string.digits + "-_")
                       for _ in range(self.rng.randint(lo, hi)))

    def string(self) -> str:
        r = self.rng.random()
        if r < 0.35:
            return self.pick(NASTY_STRINGS)
        if r < 0.6:
            return self.ident()
        if r < 0.75:
            return "".join(chr(self.rng.randint(0, 0x2FFF)) for _ in range(self.rng.randint(1, 40)))
        if r < 0.9:
            return self.pick(NASTY_STRINGS) * self.rng.randint(2, 200)
        return "x" * self.pick((63, 64, 65, 127, 128, 129, 2000, 2001, 8192, 8193, 60_000, 70_000))

    def number(self) -> Any:
        return self.pick((0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 10 ** 40, 1.5, -0.0, 1e308, float("inf"),
                          float("-inf"), float("nan"), self.rng.randint(-1000, 1000), self.rng.random()))

    def scalar(self) -> Any:
        r = self.rng.random()
        if r < 0.4:
            return self.string()
        if r < 0.7:
            return self.number()
        if r < 0.85:
            return self.pick((True, False))
        return None

    def json_value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3 or r < 0.6:
            return self.scalar()
        if r < 0.8:
            return [self.json_value(depth + 1) for _ in range(self.rng.randint(0, 5))]
        return {self.string()[:40]: self.json_value(depth + 1) for _ in range(self.rng.randint(0, 5))}

    def deep_json(self) -> str:
        """Deeply nested JSON text (a recursion error in a naive parser or serialiser)."""
        depth = self.pick((200, 1000, 5000, 20_000, 100_000))
        if self.chance(0.5):
            return "[" * depth + "]" * depth
        inner = '{"a":' * depth + "1" + "}" * depth
        return inner

    # -- mutation -----------------------------------------------------------------
    def mutate_value(self, value: Any) -> Any:
        """A value of another type, size or content than expected."""
        r = self.rng.random()
        if r < 0.25:
            return self.json_value()
        if r < 0.4:
            return None
        if r < 0.55 and isinstance(value, str):
            return self.mutate_text(value)
        if r < 0.65:
            return [value] if self.chance(0.5) else {"value": value}
        if r < 0.75:
            return str(value) if not isinstance(value, str) else self.number()
        if r < 0.85:
            return self.string()
        return self.scalar()

    def mutate_object(self, obj: dict[str, Any], protected: Sequence[str] = ()) -> dict[str, Any]:
        """Fields dropped, added, or given values of other types (``protected`` fields kept)."""
        out = dict(obj)
        for _ in range(self.rng.randint(1, 3)):
            keys = [k for k in out if k not in protected]
            r = self.rng.random()
            if r < 0.2 and keys:
                out.pop(self.pick(keys))
            elif r < 0.35:
                out[self.pick(("extra", "__proto__", "constructor", self.ident(), self.string()[:30]))] = \
                    self.json_value()
            elif keys:
                key = self.pick(keys)
                out[key] = self.mutate_value(out[key])
        return out

    def mutate_text(self, text: str) -> str:
        if not text:
            return self.string()
        data = list(text)
        for _ in range(self.rng.randint(1, 4)):
            r = self.rng.random()
            i = self.rng.randrange(len(data) + 1)
            if r < 0.3 and data:
                del data[min(i, len(data) - 1)]
            elif r < 0.55:
                data.insert(i, self.pick(("\x00", "\"", "\\", "{", "}", "[", "]", ",", ":", "\n", "\ud800",
                                          chr(self.rng.randint(0, 0x10FFFF)))))
            elif r < 0.75 and data:
                j = self.rng.randrange(len(data))
                data[j] = chr(self.rng.randint(0, 255))
            elif r < 0.9:
                data = data[:i]
            else:
                chunk = data[i:i + self.rng.randint(1, 50)]
                data[i:i] = chunk * self.rng.randint(1, 20)
        return "".join(data)

    def mutate_bytes(self, data: bytes, max_ops: int = 4) -> bytes:
        if not data:
            return self.random_bytes(self.rng.randint(0, 64))
        out = bytearray(data)
        for _ in range(self.rng.randint(1, max_ops)):
            r = self.rng.random()
            i = self.rng.randrange(len(out) + 1)
            if r < 0.4 and out:
                j = self.rng.randrange(len(out))
                out[j] ^= 1 << self.rng.randrange(8)
            elif r < 0.6 and out:
                out[self.rng.randrange(len(out))] = self.rng.randrange(256)
            elif r < 0.75:
                del out[i:i + self.rng.randint(1, 16)]
            elif r < 0.9:
                out[i:i] = self.random_bytes(self.rng.randint(1, 16))
            else:
                del out[i:]
        return bytes(out)

    def random_bytes(self, n: int) -> bytes:
        return self.rng.getrandbits(8 * n).to_bytes(n, "big") if n > 0 else b""

    def to_json(self, value: Any) -> str:
        """JSON text as a careless client writes it (NaN and Infinity included, like Python's)."""
        return json.dumps(value, ensure_ascii=self.chance(0.5))


# -- tokens ---------------------------------------------------------------------------
def sign(claims: dict[str, Any], key: str = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


class Tokens:
    """Valid tokens handed in, and hostile variants of them: bad signatures, algorithms,
    audiences, lifetimes, and claims of the wrong type (signed with the server's key)."""

    def __init__(self, grammar: Grammar, valid: Callable[[], str]) -> None:
        self.g = grammar
        self.valid = valid

    def mutated(self) -> str:
        g = self.g
        base = self.valid()
        claims = claims_of(base)
        now = int(time.time())
        r = g.rng.random()
        if r < 0.1:
            return g.mutate_text(base)
        if r < 0.15:
            return base + g.pick(("", ".", "..", "x", " ", "=="))
        if r < 0.2:
            if g.chance(0.5):
                return sign(claims, "another-key-" + "z" * 32)
            return f"{NONE_HEADER}.{base.split('.')[1]}."
        if r < 0.25:
            return g.string()
        # A claim of another type or value, signed with the server's key: only the
        # server's claim checks stand between it and the service.
        key = g.pick(tuple(claims) + ("exp", "nbf", "iat", "specialties", "site", "role", "sub", "name",
                                      "publish", "subscribe", "command", "room", "typ", "aud", "iss"))
        choice = g.rng.random()
        if key == "exp" and choice < 0.4:
            claims["exp"] = g.pick((now + 10 ** 9, 95_617_584_000, now - 3600, 2 ** 63))  # the year 5000 included
        elif key in ("specialties", "publish") and choice < 0.5:
            claims[key] = g.pick((5, "general", [5], [None], {"a": 1}, ["x" * 5000], [g.string()] * 300))
        elif choice < 0.15:
            claims.pop(key, None)
        else:
            claims[key] = g.mutate_value(claims.get(key))
        try:
            return sign(claims)
        except (TypeError, ValueError):  # a value PyJWT refuses to encode (NaN, a set...)
            return base
