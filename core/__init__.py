"""The base layer: plumbing every component uses.

Typed app keys (:mod:`core.appkeys`), the one JSON error reply and the request
middleware (:mod:`core.http`), tokens and the principal of a request
(:mod:`core.auth`), readiness probes, lifecycle, logs and metrics. Components
(``media``, ``sfu``, ``signalling``, ``devices``, ``web_client``) import it;
it imports only ``config``.
"""
