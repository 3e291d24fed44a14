"""Errors the SFU reports to its callers.

::

    SfuError (status, error, reason: safe to show the caller)
    ├── sdp.SdpError          400 bad_sdp, 413 too_large, 406 codec_mismatch, 400 unsupported_codec
    ├── Forbidden             403 forbidden      (the grant does not allow it)
    ├── NotFound              404 not_found      (no such session or publication)
    └── Unavailable           503 draining       (the node refuses new rooms and sessions)
"""

from __future__ import annotations


class SfuError(Exception):
    status = 400
    error = "bad_request"

    def __init__(self, reason: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error


class Forbidden(SfuError):
    status = 403
    error = "forbidden"


class NotFound(SfuError):
    status = 404
    error = "not_found"


class Unavailable(SfuError):
    status = 503
    error = "draining"
