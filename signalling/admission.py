"""Whether a site's visit request is taken, by the site's rate of requests: pure policy, no I/O.

A site may make ``signalling.site_requests_per_window`` requests per
``signalling.site_request_window_s`` (0: no limit). Beyond:

=================  ===========  ==============================================================
priority           outcome      why
=================  ===========  ==============================================================
routine, urgent    ``REFUSE``   ``rate_limited``: one site cannot flood the queue
emergency          ``FLAG``     taken, and stays an emergency (never refused, never demoted):
                                flagged to the admins (journal ``visit.flag``, event
                                ``visit.flagged``) and queued after the other sites'
                                emergencies, so that a flood cannot go ahead of a real one
=================  ===========  ==============================================================
"""

from __future__ import annotations

import enum

from signalling.protocol import Priority

SITE_RATE = "site_rate"
"""The flag of an emergency above its site's rate."""


class Admission(enum.Enum):
    ADMIT = "admit"
    FLAG = "flag"
    REFUSE = "refuse"


def admit(priority: Priority, requests_in_window: int, limit: int) -> Admission:
    """The outcome for a request that is the site's ``requests_in_window``-th in the window."""
    if limit <= 0 or requests_in_window <= limit:
        return Admission.ADMIT
    return Admission.FLAG if priority is Priority.EMERGENCY else Admission.REFUSE


__all__ = ["Admission", "SITE_RATE", "admit"]
