"""The version range of a library whose internals we touch, checked when its module loads.

Each ``media/*_internals.py`` module reaches inside one upstream library (aiortc, aioice,
pylibsrtp) in ways that only the versions its tests ran against are known to support. It
refuses to load on any other version, with an ImportError that names what it needs and what
it found, so that an upgrade fails at start-up rather than by silently breaking forwarding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import version

_LEADING_NUMBER = re.compile(r"\d+")


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"1.16.0rc1"`` -> ``(1, 16, 0)``. Parts after
    the first one that does not start with a digit are ignored (local or dev suffixes)."""
    parts: list[int] = []
    for piece in version.strip().split("."):
        match = _LEADING_NUMBER.match(piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def require_version(distribution: str, found: str, at_least: str, below: str, *, module: str) -> None:
    """Raise ImportError unless ``at_least <= found < below`` (numeric release comparison)."""
    have = release(found)
    if not have or not release(at_least) <= have < release(below):
        raise ImportError(
            f"{module} needs {distribution}>={at_least},<{below} (the versions its tests check); "
            f"found {distribution} {found}. Install a version in that range, or re-check {module} "
            f"against {distribution} {found} and widen the range."
        )


@dataclass(frozen=True)
class VersionRange:
    """The versions of ``distribution`` that ``module``'s tests ran against."""

    distribution: str
    at_least: str
    below: str
    module: str

    def check(self, found: str) -> None:
        """ImportError unless ``found`` is in the range."""
        require_version(self.distribution, found, self.at_least, self.below, module=self.module)

    def check_installed(self) -> None:
        self.check(version(self.distribution))
