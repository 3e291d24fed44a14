"""SRTP session pairs on every profile aiortc negotiates (shared by the internals tests)."""

from __future__ import annotations

import os

from aiortc.rtcdtlstransport import SRTP_PROFILES
from pylibsrtp import Policy, Session


def session_pairs() -> list[tuple[Session, Session]]:
    """(outbound, inbound) sessions with one key per profile, as aiortc configures them."""
    out = []
    for profile in SRTP_PROFILES:
        key = os.urandom(profile.key_length + profile.salt_length)
        pair = []
        for ssrc_type in (Policy.SSRC_ANY_OUTBOUND, Policy.SSRC_ANY_INBOUND):
            policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
            policy.allow_repeat_tx = True
            policy.window_size = 1024
            pair.append(Session(policy))
        out.append((pair[0], pair[1]))
    return out
