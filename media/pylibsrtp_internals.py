"""Every pylibsrtp internal we touch, and nothing else.

``Session.protect`` / ``unprotect`` check the argument's type and allocate an ``int *`` per
call; on the forwarding path (one call per packet and subscriber) that is a measurable part of
the cost. :func:`srtp_protector` and :func:`srtp_unprotector` make the same libsrtp call on the
session's own buffer (``Session._cdata``, ``_buffer``, ``_srtp``; ``pylibsrtp._binding``;
``pylibsrtp._srtp_assert``), reusing one length cell: the same bytes out, the same errors.

:func:`native_session` gives the same session to C (``media/_rtpsend.c``): the address of
libsrtp's ``srtp_protect`` in pylibsrtp's bundled libsrtp (``lib.srtp_protect``, whose 1.0
signature is ``srtp_err_status_t (srtp_t, void *, int *)``) and the session's ``srtp_t``.

Loads only on the pylibsrtp versions ``tests/media/test_pylibsrtp_internals.py`` checked.
"""

from __future__ import annotations

from typing import Callable

import pylibsrtp

from media.library_versions import VersionRange

TESTED = VersionRange("pylibsrtp", at_least="1.0", below="1.1", module=__name__)
TESTED.check_installed()

Protect = Callable[[bytes], bytes]
Unprotect = Callable[[bytes], "bytes | None"]


def srtp_protector(session: pylibsrtp.Session) -> Protect:
    """``session.protect`` without its per-call type check and ``int *`` allocation: the
    same libsrtp call on the session's own buffer (pylibsrtp 1.0's ``Session.__process``),
    the same bytes out, the same errors."""
    binding = pylibsrtp._binding
    ffi, lib = binding.ffi, binding.lib
    cdata, buffer, srtp = session._cdata, session._buffer, session._srtp
    limit = len(cdata) - pylibsrtp.SRTP_MAX_TRAILER_LEN
    length = ffi.new("int *")
    protect = lib.srtp_protect
    check = pylibsrtp._srtp_assert

    def protect_now(data: bytes) -> bytes:
        n = len(data)
        if n > limit:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        rc = protect(srtp[0], cdata, length)
        if rc:
            check(rc)
        return buffer[0:length[0]]

    return protect_now


def srtp_unprotector(session: pylibsrtp.Session) -> Unprotect:
    """``session.unprotect`` the way :func:`srtp_protector` does ``protect``: the same libsrtp
    call on the session's buffer, the same bytes out; None where ``unprotect`` raises
    ``pylibsrtp.Error`` (authentication, replay), ValueError for a datagram too long, as it."""
    binding = pylibsrtp._binding
    lib = binding.lib
    cdata, buffer, srtp = session._cdata, session._buffer, session._srtp
    limit = len(cdata)
    length = binding.ffi.new("int *")
    unprotect = lib.srtp_unprotect

    def unprotect_now(data: bytes) -> bytes | None:
        n = len(data)
        if n > limit:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        if unprotect(srtp[0], cdata, length):
            return None
        return buffer[0:length[0]]

    return unprotect_now


def native_session(session: pylibsrtp.Session) -> tuple[int, int]:
    """(address of libsrtp's ``srtp_protect``, the session's ``srtp_t``), as integers, for C
    code that protects in its own buffers. The session must outlive their use (it owns the
    ``srtp_t``: ``Session._srtp``)."""
    binding = pylibsrtp._binding
    ffi, lib = binding.ffi, binding.lib
    protect = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
    return protect, int(ffi.cast("uintptr_t", session._srtp[0]))
