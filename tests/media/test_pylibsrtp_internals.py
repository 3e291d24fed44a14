"""The pylibsrtp internals media/pylibsrtp_internals.py relies on: bytes in = bytes out against
pylibsrtp's own Session, so that an upgrade that changes them fails here, loudly."""

from __future__ import annotations

import inspect
import struct

import pylibsrtp
import pytest

from media import aiortc_internals
from media.pylibsrtp_internals import srtp_protector, srtp_unprotector


def rtp(seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 4242) + bytes([seq % 256]) * size



def test_srtp_protector_and_unprotector_are_the_sessions_own():
    """The direct libsrtp calls give the bytes Session.protect / unprotect give (and the same
    refusals), on every profile aiortc negotiates; pylibsrtp's internals they use are still there."""
    source = inspect.getsource(pylibsrtp.Session)
    assert "self._buffer[0 : len(data)] = data" in source and "func(self._srtp[0], self._cdata, len_p)" in source
    for tx, rx in aiortc_internals.srtp_session_pairs():
        tx2, rx2 = aiortc_internals.srtp_session_pairs()[0]  # unrelated keys
        protect, unprotect = srtp_protector(tx), srtp_unprotector(rx)
        for seq in range(1, 40):
            plain = struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 4242) + bytes([seq]) * (seq * 30)
            protected = protect(plain)
            assert protected == tx.protect(plain)  # allow_repeat_tx: the same packet again, same bytes
            assert unprotect(protected) == plain
            assert unprotect(protected) is None  # replay: refused, as rx.unprotect raises
            with pytest.raises(pylibsrtp.Error):
                rx.unprotect(protected)
        assert srtp_unprotector(rx2)(protected) is None  # authentication fails
        with pytest.raises(ValueError):
            protect(b"\x80" * 1500)
        with pytest.raises(ValueError):
            unprotect(b"\x80" * 1501)


def test_what_the_protector_sends_a_plain_session_decrypts():
    """Bytes in = bytes out across the two paths, both ways: the protector's output through a
    plain ``Session.unprotect``, a plain ``Session.protect``'s output through the unprotector."""
    for tx, rx in aiortc_internals.srtp_session_pairs():
        protect = srtp_protector(tx)
        sent = [rtp(seq, 40 + seq * 7) for seq in range(100, 160)]
        assert [rx.unprotect(protect(p)) for p in sent] == sent
    for tx, rx in aiortc_internals.srtp_session_pairs():
        unprotect = srtp_unprotector(rx)
        sent = [rtp(seq, 1000 + seq) for seq in range(1, 30)]
        assert [unprotect(tx.protect(p)) for p in sent] == sent


def test_a_protector_follows_its_session_between_packets():
    """One session, its state (rollover counter, replay window) shared by both paths: packets
    protected alternately by the two arrive in order and decrypt."""
    (tx, rx), = aiortc_internals.srtp_session_pairs()[:1]
    protect = srtp_protector(tx)
    sent = [rtp(seq, 200) for seq in range(1, 21)]
    protected = [protect(p) if seq % 2 else tx.protect(p) for seq, p in enumerate(sent)]
    unprotect = srtp_unprotector(rx)
    assert [unprotect(p) for p in protected] == sent
