"""One validated settings object, loaded from TOML and the environment.

Rules:

* Every section is a frozen dataclass; every key has a type and a default.
* A TOML file overrides defaults; environment variables named
  ``TELECONSULT_<SECTION>__<KEY>`` override the file (lists are comma-separated,
  booleans ``true``/``false``/``1``/``0``).
* Unknown sections or keys, wrong types and impossible values raise
  :class:`SettingsError`, whose message names the key (and the line when the
  value came from a file).
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import ipaddress
import os
import re
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "TELECONSULT_"


class SettingsError(ValueError):
    """A configuration problem, with where it is."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "teleconsult")


MAX_MEDIA_WORKERS = 64


def _is_origin(value: str) -> bool:
    """``scheme://host[:port]`` with an http(s) scheme and nothing after: what a CSP source and
    a browser's ``Origin`` are."""
    parsed = urllib.parse.urlsplit(value)
    try:
        parsed.port
    except ValueError:
        return False
    return (parsed.scheme in ("http", "https") and bool(parsed.hostname) and parsed.path in ("", "/")
            and not parsed.query and not parsed.fragment and not parsed.username)


class NodeRole(str, enum.Enum):
    """What a ``teleconsult serve`` process does (``server.roles``)."""

    SIGNALLING = "signalling"
    """The pages, the signalling socket's clients, matching, the REST and interop endpoints."""
    MEDIA = "media"
    """A media node: registers in the store's node registry, hosts rooms (the SFU, WHIP/WHEP,
    recording) and answers the pages' media requests on its socket."""


ALL_ROLES = [r.value for r in NodeRole]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    """Address the HTTP(S) server binds."""
    port: int = 8080
    public_url: str = ""
    """Base URL people use (links, OpenID redirects); derived from host/port when empty."""
    tls_cert: str = ""
    """PEM certificate; with tls_key, the server speaks HTTPS/WSS."""
    tls_key: str = ""
    data_dir: str = field(default_factory=_default_data_dir)
    """Journal, durable records, stills, recordings, the development signing key."""
    drain_timeout_s: float = 600.0
    """After the first SIGTERM, how long live consultations may go on."""
    log_format: str = "text"
    """``text`` for people, ``json`` (one object a line) for collectors."""
    log_level: str = "INFO"
    allowed_origins: list[str] = field(default_factory=list)
    """Origins allowed to open the WebSocket besides the server's own."""
    media_workers: int = 1
    """SFU processes ``teleconsult serve`` runs beside its signalling (``--media-workers``).
    1: the one process is signalling and SFU. More: that many worker processes, each a media
    node of the Redis store's registry on HTTP port ``port + i`` (i = 1..N; free ports when
    port is 0) with its slice of ``media.port_min..port_max``; the first process is then the
    signalling and the pages only. Needs ``store.backend = "redis"``."""
    media_origins: list[str] = field(default_factory=list)
    """Origins of media nodes (``scheme://host:port``) the pages may connect to besides their own
    (their Content-Security-Policy ``connect-src``); ``serve --media-workers`` adds its workers'."""
    roles: list[str] = field(default_factory=lambda: list(ALL_ROLES))
    """What this process runs (:class:`NodeRole`): ``signalling`` (the pages, matching, the
    REST and interop endpoints), ``media`` (a media node of the store's registry: rooms are
    placed on it), or both (the default). One role alone needs the Redis store: the other role
    runs in other processes (docs/deployment.md, *Several hosts*)."""

    def runs(self, role: NodeRole) -> bool:
        """Whether this process runs ``role``: the parent of ``serve --media-workers N`` (N > 1)
        is the signalling only (its workers are the media nodes)."""
        if self.media_workers > 1:
            return role is NodeRole.SIGNALLING
        return role.value in self.roles

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if not 0 <= self.port <= 65535:
            errors.append(("port", "must be between 0 and 65535"))
        if not 1 <= self.media_workers <= MAX_MEDIA_WORKERS:
            errors.append(("media_workers", f"must be between 1 and {MAX_MEDIA_WORKERS}"))
        elif self.port and self.port + self.media_workers > 65535 and self.media_workers > 1:
            errors.append(("media_workers", f"the workers' HTTP ports (port + 1 .. port + {self.media_workers}) "
                                            "must stay <= 65535"))
        if not self.roles:
            errors.append(("roles", f"must name at least one of {', '.join(ALL_ROLES)}"))
        for role in self.roles:
            if role not in ALL_ROLES:
                errors.append(("roles", f"{role!r} is not a role (expected some of {', '.join(ALL_ROLES)})"))
        if len(set(self.roles)) != len(self.roles):
            errors.append(("roles", "names a role twice"))
        if self.media_workers > 1 and set(self.roles) != set(ALL_ROLES):
            errors.append(("roles", "with media_workers > 1 this process is the signalling and its workers the "
                                    "media nodes: leave roles at both"))
        for origin in self.media_origins:
            if not _is_origin(origin):
                errors.append(("media_origins", f"{origin!r} is not an origin (http(s)://host[:port], no path)"))
        if bool(self.tls_cert) != bool(self.tls_key):
            errors.append(("tls_cert", "tls_cert and tls_key go together"))
        if self.drain_timeout_s < 0:
            errors.append(("drain_timeout_s", "must be >= 0"))
        if self.log_format not in ("text", "json"):
            errors.append(("log_format", "must be 'text' or 'json'"))
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            errors.append(("log_level", "must be DEBUG, INFO, WARNING or ERROR"))
        return errors


@dataclass(frozen=True)
class MediaSettings:
    listen_ip: str = ""
    """Address the SFU binds its UDP media sockets to; 0.0.0.0 means every interface address.
    Empty: the address HTTP binds (server.host; ``localhost`` is 127.0.0.1). Read it resolved
    through ``Settings.effective_media``."""
    announced_ip: str = ""
    """Address put in the SFU's ICE candidates (public IP behind NAT); defaults to listen_ip."""
    port_min: int = 40000
    port_max: int = 49999
    allowed_remote_networks: list[str] = field(default_factory=list)
    """Remote ICE candidates outside these networks are ignored (never checked). Empty: those
    that can reach listen_ip: loopback only for a loopback address, else every network."""
    pli_interval_s: float = 0.3
    """Minimum time between two keyframe requests sent to one publisher."""
    nack_history: int = 512
    """Packets kept per subscription to answer NACKs."""
    retransmit_packets_per_s: float = 200.0
    """Retransmissions one subscriber's NACKs may cause, packets per second (1 s of burst);
    NACKed packets beyond are not resent."""
    retransmit_bytes_per_s: float = 250_000.0
    """The same budget in bytes per second (before SRTP)."""
    retransmit_share: float = 0.1
    """Once a peer's bandwidth estimate is known, retransmissions are held to this share of it:
    what the SFU resends to a subscriber (within the two budgets above too), and what its NACKs
    ask a publisher to resend (docs/whip-whep.md, Congestion control)."""
    nack_max_retries: int = 3
    """Times the SFU asks a publisher for one lost packet."""
    nack_max_age_ms: float = 1000.0
    """A packet missing from a publisher for longer is no longer asked for."""
    nurse_site_share: float = 0.35
    """The nurse's browser is sent a REMB of at most this share of the site's estimate (its
    own and the device agent's, which share the uplink) while the agent publishes too."""
    close_timeout_s: float = 5.0
    """Deadline for closing a peer connection (a participant, a room, the pre-call check):
    past it, its transports and sockets are released without waiting for aiortc."""
    dscp: bool = True
    """Mark the device agent's media packets with DSCP (IP TOS): the stethoscope's session
    EF (46), the video devices' AF41 (34), so that site routers that honour it queue the
    heart sounds first. Off: the system's default (some networks drop marked packets)."""
    send_path: str = "auto"
    """How the SFU forwards and writes packets (sfu/leg.py, media/send_batch.py): each socket's
    packets of one event-loop turn go together. ``native``: the C extensions ``sfu._fanout``
    (one call per publisher packet for all its subscriptions) and ``media._rtpsend`` (SRTP, one
    ``sendmmsg`` per socket and turn, a video frame as one segmented message); the server refuses
    to start where they were not built. ``python``: the same in Python, pylibsrtp and one
    ``sendto`` per packet. ``auto``: native where built, else python (logged)."""

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.send_path not in ("auto", "native", "python"):
            errors.append(("send_path", "must be 'auto', 'native' or 'python'"))
        for key in tuple(k for k in ("listen_ip", "announced_ip") if getattr(self, k)):
            try:
                ipaddress.ip_address(getattr(self, key))
            except ValueError:
                errors.append((key, f"{getattr(self, key)!r} is not an IP address"))
        if not (1 <= self.port_min <= self.port_max <= 65535):
            errors.append(("port_min", "need 1 <= port_min <= port_max <= 65535"))
        for net in self.allowed_remote_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                errors.append(("allowed_remote_networks", f"{net!r} is not a network"))
        if self.pli_interval_s <= 0:
            errors.append(("pli_interval_s", "must be > 0"))
        if not 16 <= self.nack_history <= 1024:
            # Above SRTP's replay window (1024 packets) a resent packet without RTX is refused.
            errors.append(("nack_history", "must be between 16 and 1024"))
        for key in ("retransmit_packets_per_s", "retransmit_bytes_per_s", "close_timeout_s"):
            if getattr(self, key) <= 0:
                errors.append((key, "must be > 0"))
        for key in ("retransmit_share", "nurse_site_share"):
            if not 0 < getattr(self, key) <= 1:
                errors.append((key, "must be within (0, 1]"))
        if not 1 <= self.nack_max_retries <= 20:
            errors.append(("nack_max_retries", "must be between 1 and 20"))
        if not 20 <= self.nack_max_age_ms <= 10_000:
            errors.append(("nack_max_age_ms", "must be between 20 and 10000"))
        return errors

    def bound_to(self, http_host: str) -> "MediaSettings":
        """These settings with the derived defaults filled in for an HTTP server bound to
        ``http_host``: listen_ip (empty: that address) and allowed_remote_networks (empty:
        loopback for a loopback address, else every network). ValueError when listen_ip is
        empty and ``http_host`` names no address."""
        listen_ip = self.listen_ip or media_address_of(http_host)
        if listen_ip is None:
            raise ValueError(f"server.host {http_host!r} is not an IP address: set media.listen_ip")
        networks = self.allowed_remote_networks
        if not networks:
            loopback = ipaddress.ip_address(listen_ip).is_loopback
            networks = ["127.0.0.0/8", "::1/128"] if loopback else ["0.0.0.0/0", "::/0"]
        return dataclasses.replace(self, listen_ip=listen_ip, allowed_remote_networks=list(networks))


def media_address_of(http_host: str) -> str | None:
    """The address media binds for an HTTP server bound to ``http_host``: an IP address as
    it is, ``localhost`` as 127.0.0.1, empty (every interface, as aiohttp reads it) as
    0.0.0.0; None for another host name."""
    host = http_host.strip().strip("[]")
    if not host:
        return "0.0.0.0"
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@dataclass(frozen=True)
class IceSettings:
    stun_urls: list[str] = field(default_factory=list)
    turn_urls: list[str] = field(default_factory=list)
    """e.g. turns:turn.example.org:443?transport=tcp"""
    turn_secret: str = ""
    """Shared secret of the coturn REST API scheme (use-auth-secret)."""
    turn_ttl_s: int = 3600

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        for url in self.stun_urls:
            if not url.startswith(("stun:", "stuns:")):
                errors.append(("stun_urls", f"{url!r} is not a stun: URL"))
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                errors.append(("turn_urls", f"{url!r} is not a turn: URL"))
        if self.turn_urls and not self.turn_secret:
            errors.append(("turn_secret", "required when turn_urls are set"))
        if self.turn_ttl_s <= 0:
            errors.append(("turn_ttl_s", "must be > 0"))
        return errors


_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "PS256"}


@dataclass(frozen=True)
class AuthSettings:
    issuer: str = "teleconsult"
    audience: str = "teleconsult"
    algorithm: str = "HS256"
    """Algorithm our own tokens are signed with; the only one accepted for them."""
    signing_key: str = ""
    """HS* secret, or a path to a PEM private key for RS/ES/EdDSA. Empty: a development
    key is generated once under data_dir (never for production)."""
    verify_key: str = ""
    """Path to the PEM public key for RS/ES/EdDSA (derived from the private key when empty)."""
    access_ttl_s: int = 8 * 3600
    room_ttl_s: int = 4 * 3600
    leeway_s: int = 5
    max_token_lifetime_s: int = 24 * 3600
    """No token is accepted (or issued) that lives longer than this, from its ``iat`` or from
    now: ours and the OpenID provider's."""
    oidc_issuer: str = ""
    """An external OpenID provider (regional SSO, Pro Santé Connect) whose tokens are accepted."""
    oidc_jwks_url: str = ""
    oidc_audience: str = ""
    oidc_algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    oidc_role_claim: str = "teleconsult_role"
    oidc_authorize_url: str = ""
    """The provider's authorization endpoint: ``/auth/oidc/login`` sends people there (authorization
    code flow with PKCE), ``/auth/oidc/callback`` takes them back."""
    oidc_client_id: str = ""
    oidc_scopes: list[str] = field(default_factory=lambda: ["openid", "scope_all"])
    """Scopes asked at sign-in (Pro Santé Connect: ``openid scope_all``)."""
    oidc_acr_values: list[str] = field(default_factory=lambda: ["eidas1"])
    """Authentication levels asked (``acr_values``); an ID token whose ``acr`` is not one of them is refused."""
    oidc_token_url: str = ""
    """The provider's token endpoint; with ``oidc_authorize_url``, turns the server-side sign-in on."""
    oidc_userinfo_url: str = ""
    """The provider's userinfo endpoint (the RPPS number and profession of who signed in)."""
    oidc_client_secret_file: str = ""
    """A file holding this client's secret (HTTP Basic at the token endpoint); empty: a public client (PKCE only)."""

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.algorithm not in _ALGORITHMS:
            errors.append(("algorithm", f"must be one of {sorted(_ALGORITHMS)}"))
        if self.algorithm.startswith("HS") and self.signing_key and len(self.signing_key) < 32:
            errors.append(("signing_key", "an HS secret needs at least 32 characters"))
        for name in ("access_ttl_s", "room_ttl_s"):
            if getattr(self, name) <= 0:
                errors.append((name, "must be > 0"))
            elif getattr(self, name) > self.max_token_lifetime_s:
                errors.append((name, "must be <= max_token_lifetime_s"))
        if bool(self.oidc_issuer) != bool(self.oidc_jwks_url):
            errors.append(("oidc_jwks_url", "oidc_issuer and oidc_jwks_url go together"))
        for alg in self.oidc_algorithms:
            if alg not in _ALGORITHMS or alg.startswith("HS"):
                errors.append(("oidc_algorithms", f"{alg!r} is not an asymmetric JWT algorithm"))
        if "openid" not in self.oidc_scopes:
            errors.append(("oidc_scopes", "must include 'openid'"))
        if not self.oidc_acr_values:
            errors.append(("oidc_acr_values", "at least one level (Pro Santé Connect: 'eidas1')"))
        for name in ("oidc_authorize_url", "oidc_token_url", "oidc_userinfo_url"):
            url = getattr(self, name)
            if url and not url.startswith(("https://", "http://")):
                errors.append((name, "must be an http(s) URL"))
        if self.oidc_token_url:
            for name in ("oidc_authorize_url", "oidc_userinfo_url", "oidc_client_id", "oidc_issuer"):
                if not getattr(self, name):
                    errors.append((name, "required for the sign-in (oidc_token_url is set)"))
        return errors


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "memory"
    """``memory`` (one process, the embedded default) or ``redis`` (several processes)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tc:"

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.backend not in ("memory", "redis"):
            errors.append(("backend", "must be 'memory' or 'redis'"))
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            errors.append(("redis_url", "must be a redis://, rediss:// or unix:// URL"))
        return errors


@dataclass(frozen=True)
class SfuSettings:
    standalone_rooms: bool = False
    """Open rooms for any valid room token. False (the default): a room opens only for a live
    consultation, and media for a room whose consultation ended is refused (403). Benches and
    SFU tests that make room tokens by hand set it."""

    def validate(self) -> list[tuple[str, str]]:
        return []


@dataclass(frozen=True)
class SignallingSettings:
    offer_timeout_s: float = 30.0
    """How long an offer rings one physician before passing to the next."""
    resume_grace_s: float = 30.0
    """How long a dropped client may come back and resume its session."""
    heartbeat_s: float = 10.0
    max_message_bytes: int = 64 * 1024
    max_messages_per_s: float = 50.0
    send_queue_size: int = 256
    """Messages queued to one client before it is considered too slow and disconnected."""
    directory_file: str = ""
    """Sites and clinicians (JSON); empty: the development directory shipped with the code."""
    max_session_s: float = 12 * 3600.0
    """``auth.renew`` mints fresh access tokens until this long after the first token of the chain
    was issued; then the person signs in again (a bound on what a stolen token can be stretched to)."""
    site_requests_per_window: int = 30
    """Visit requests one site may make per ``site_request_window_s``; beyond, ``rate_limited``,
    except emergencies, which are taken (never demoted) but flagged to the admins and queued
    after the other sites' emergencies. 0: no limit."""
    site_request_window_s: float = 60.0

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        for name in ("offer_timeout_s", "resume_grace_s", "heartbeat_s", "max_messages_per_s"):
            if getattr(self, name) <= 0:
                errors.append((name, "must be > 0"))
        if not 60 <= self.max_session_s <= 7 * 86400:
            errors.append(("max_session_s", "must be between 60 and 604800 (7 days)"))
        if self.max_message_bytes < 1024:
            errors.append(("max_message_bytes", "must be >= 1024"))
        if self.send_queue_size < 1:
            errors.append(("send_queue_size", "must be >= 1"))
        if self.site_requests_per_window < 0:
            errors.append(("site_requests_per_window", "must be >= 0"))
        if self.site_request_window_s <= 0:
            errors.append(("site_request_window_s", "must be > 0"))
        return errors


@dataclass(frozen=True)
class RecordingSettings:
    encrypt: bool = True
    """Encrypt health data at rest: recordings, stills and the records (reports, reasons,
    patient references). Off is for throw-away development data only; production refuses it."""
    master_key_file: str = ""
    """A file holding the base64 master key (32 bytes). With master_key_env empty too: a
    development key is generated once under server.data_dir (never for production)."""
    master_key_env: str = ""
    """Name of an environment variable holding the base64 master key (read before master_key_file)."""
    retention_days: int = 30
    flush_interval_s: float = 1.0

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if self.retention_days < 1:
            errors.append(("retention_days", "must be >= 1"))
        if self.flush_interval_s <= 0:
            errors.append(("flush_interval_s", "must be > 0"))
        return errors


@dataclass(frozen=True)
class DevicesSettings:
    stethoscope_input: str = "alsa:default"
    """``alsa:DEVICE`` or ``pulse:SOURCE``."""
    dermatoscope_input: str = "/dev/video0"
    dermatoscope_size: str = "1920x1080"
    otoscope_input: str = "/dev/video1"
    otoscope_size: str = "1280x720"
    framerate: int = 30

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        for name in ("dermatoscope_size", "otoscope_size"):
            if not re.fullmatch(r"\d{2,5}x\d{2,5}", getattr(self, name)):
                errors.append((name, "must look like 1280x720"))
        if not 1 <= self.framerate <= 120:
            errors.append(("framerate", "must be between 1 and 120"))
        if not self.stethoscope_input.startswith(("alsa:", "pulse:")):
            errors.append(("stethoscope_input", "must start with alsa: or pulse:"))
        return errors


@dataclass(frozen=True)
class ExpertiseSettings:
    """Télé-expertise (``signalling.expertise``, docs/expertise.md)."""

    upload_max_bytes: int = 15 * 1024 * 1024
    """The largest photo a browser may upload to a case (JPEG or PNG)."""
    upload_max_pixels: int = 50_000_000
    """Width x height beyond which an upload is refused before it is decoded."""
    max_attachments: int = 20
    due_warning_s: float = 12 * 3600.0
    """A case this close to its due date (or past it) is flagged to its expert and opened to the
    specialty's pool by the sweeper."""
    sweep_interval_s: float = 60.0

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        if not 1024 <= self.upload_max_bytes <= 100 * 1024 * 1024:
            errors.append(("upload_max_bytes", "must be between 1024 and 104857600"))
        if not 1 <= self.upload_max_pixels <= 200_000_000:
            errors.append(("upload_max_pixels", "must be between 1 and 200000000"))
        if not 1 <= self.max_attachments <= 200:
            errors.append(("max_attachments", "must be between 1 and 200"))
        if self.due_warning_s < 0:
            errors.append(("due_warning_s", "must be >= 0"))
        if self.sweep_interval_s <= 0:
            errors.append(("sweep_interval_s", "must be > 0"))
        return errors


class SmtpSecurity(str, enum.Enum):
    """How the connection to the relay is protected, named by the URL's scheme."""

    PLAIN = "smtp"
    """No TLS (a relay on this host or a trusted LAN); never STARTTLS, even when offered."""
    TLS = "smtps"
    """TLS from the first byte (implicit TLS, "SMTPS")."""
    STARTTLS = "smtp+starttls"
    """Plain connection upgraded with STARTTLS, which the relay must offer (else nothing is sent)."""


_SMTP_DEFAULT_PORTS = {SmtpSecurity.PLAIN: 25, SmtpSecurity.TLS: 465, SmtpSecurity.STARTTLS: 587}


@dataclass(frozen=True)
class SmtpRelay:
    """Where ``smtp.url`` points."""

    security: SmtpSecurity
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        host = self.host.strip("[]")
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def parse_smtp_url(url: str) -> SmtpRelay:
    """``smtp://host[:port]`` (25), ``smtps://host[:port]`` (465) or ``smtp+starttls://host[:port]``
    (587); ValueError saying what is wrong."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None  # not echoed: it might hold a password
    try:
        security = SmtpSecurity(parts.scheme.lower())
    except ValueError:
        raise ValueError(f"the scheme must be one of {', '.join(s.value + '://' for s in SmtpSecurity)}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("no credentials in the URL: set smtp.username and smtp.password_file or password_env")
    if not parts.hostname:
        raise ValueError("needs a host, e.g. smtp+starttls://relay.example.org:587")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("only a scheme, a host and a port (no path or query)")
    if port == 0:
        raise ValueError("port must be between 1 and 65535")
    return SmtpRelay(security, parts.hostname, port or _SMTP_DEFAULT_PORTS[security])


def _bad_address(value: str) -> str | None:
    """Why ``value`` is not one mail address (optionally with a display name), or None."""
    if any(c in value for c in "\r\n\0"):
        return "must be one line"
    name, address = email.utils.parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or any(c.isspace() for c in address):
        return f"{value!r} is not a mail address (e.g. 'Téléconsultation <noreply@example.org>')"
    return None


@dataclass(frozen=True)
class SmtpSettings:
    """E-mail through an SMTP relay (``core/mail.py``): télé-expertise notifications, invitations.
    Sending is best effort and off the request's path; a failure is logged, never an error."""

    url: str = ""
    """``smtp://host[:port]`` (no TLS, port 25), ``smtps://host[:port]`` (implicit TLS, 465) or
    ``smtp+starttls://host[:port]`` (STARTTLS required, 587). Empty: no e-mail is sent."""
    sender: str = ""
    """The From address, with an optional name: ``Téléconsultation <noreply@example.org>``."""
    username: str = ""
    """Login at the relay (empty: none); its password comes from password_env or password_file."""
    password_file: str = ""
    """A file holding the relay password (read once at start; never logged)."""
    password_env: str = ""
    """Name of an environment variable holding the relay password (read before password_file)."""
    timeout_s: float = 10.0
    """Connecting and each SMTP command, at most this long; past it the message is given up (logged)."""
    queue_size: int = 1000
    """Messages waiting to be sent; beyond, new ones are dropped (logged and counted)."""
    validate_certs: bool = True
    """Check the relay's TLS certificate (smtps, smtp+starttls) against the system's CAs."""

    @property
    def relay(self) -> SmtpRelay | None:
        """Where to send (None: e-mail is off)."""
        return parse_smtp_url(self.url) if self.url.strip() else None

    def validate(self) -> list[tuple[str, str]]:
        errors = []
        relay = None
        if self.url.strip():
            try:
                relay = parse_smtp_url(self.url)
            except ValueError as exc:
                errors.append(("url", str(exc)))
            if not self.sender:
                errors.append(("sender", "required when url is set"))
        if self.sender and (why := _bad_address(self.sender)):
            errors.append(("sender", why))
        has_password = bool(self.password_file or self.password_env)
        if self.username and not has_password:
            errors.append(("username", "needs password_file or password_env"))
        if has_password and not self.username:
            errors.append(("username", "required with password_file or password_env"))
        if self.password_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.password_env):
            errors.append(("password_env", "must be an environment variable's name"))
        if (relay is not None and self.username and relay.security is SmtpSecurity.PLAIN
                and not relay.loopback):
            # A password in clear over the network is worse than no e-mail.
            errors.append(("url", "a login needs smtps:// or smtp+starttls:// (smtp:// only to a loopback relay)"))
        if not 0 < self.timeout_s <= 300:
            errors.append(("timeout_s", "must be within (0, 300]"))
        if not 1 <= self.queue_size <= 100_000:
            errors.append(("queue_size", "must be between 1 and 100000"))
        return errors


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    ice: IceSettings = field(default_factory=IceSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    sfu: SfuSettings = field(default_factory=SfuSettings)
    signalling: SignallingSettings = field(default_factory=SignallingSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    devices: DevicesSettings = field(default_factory=DevicesSettings)
    expertise: ExpertiseSettings = field(default_factory=ExpertiseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    source: str = ""
    """Where the settings came from (for messages)."""

    def replace(self, **sections: Any) -> "Settings":
        """A copy with some keys changed: ``replace(media={"listen_ip": "127.0.0.1"})``."""
        changed = {}
        for name, values in sections.items():
            changed[name] = dataclasses.replace(getattr(self, name), **values)
        out = dataclasses.replace(self, **changed)
        problems = _validate(out, {})
        if problems:
            raise SettingsError(problems)
        return out

    @property
    def base_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        scheme = "https" if self.server.tls_cert else "http"
        host = self.server.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.server.port}"

    @property
    def effective_media(self) -> MediaSettings:
        """``media`` as the SFU uses it: listen_ip and allowed_remote_networks filled in from
        server.host when empty (:meth:`MediaSettings.bound_to`)."""
        return self.media.bound_to(self.server.host)


_SECTION_TYPES = typing.get_type_hints(Settings)
_SECTION_TYPES.pop("source")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """Line numbers of ``key = `` lines per section, for error messages."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", stripped)
        if header:
            section = header.group(1)
            lines[(section, "")] = number
            continue
        key = re.match(r'^"?([A-Za-z0-9_-]+)"?\s*=', stripped)
        if key:
            lines.setdefault((section, key.group(1)), number)
    return lines


def _coerce(value: Any, typ: Any, from_env: bool) -> Any:
    """Check (and from the environment, convert) one value; raise ValueError with a reason."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return [_coerce(v, item, from_env) for v in value]
    if typ is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean, got {value!r}")
        if not isinstance(value, bool):
            raise ValueError(f"expected a boolean, got {type(value).__name__}")
        return value
    if typ is int:
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        return value
    if typ is float:
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported settings type {typ!r}")  # a programming error


def _validate(settings: Settings, lines: Mapping[tuple[str, str], int]) -> list[str]:
    problems = []
    for section in _SECTION_TYPES:
        for key, reason in getattr(settings, section).validate():
            problems.append(_where(settings.source, lines, section, key) + f"{section}.{key}: {reason}")
    if not settings.media.listen_ip and media_address_of(settings.server.host) is None:
        problems.append(_where(settings.source, lines, "server", "host") + f"media.listen_ip: must be set when "
                        f"server.host ({settings.server.host!r}) is not an IP address")
    workers = settings.server.media_workers
    if workers > 1 and settings.store.backend != "redis":
        # The workers are nodes of the store's registry; the memory store lives in one process.
        problems.append(_where(settings.source, lines, "server", "media_workers") +
                        f"server.media_workers (--media-workers) is {workers}: more than one media worker needs "
                        f"the Redis store (store.backend = \"redis\", store.redis_url); the memory store "
                        f"({settings.store.backend!r}) holds one process's state only")
    alone = [r for r in settings.server.roles if r in ALL_ROLES]
    if len(alone) == 1 and settings.store.backend != "redis":
        # The other role runs in other processes, which only the Redis store lets them share.
        problems.append(_where(settings.source, lines, "server", "roles") +
                        f"server.roles is [{alone[0]!r}]: a process with one role needs the Redis store "
                        f"(store.backend = \"redis\"), where the processes of the other role meet it")
    if workers > 1 and settings.media.port_max - settings.media.port_min + 1 < workers * MIN_WORKER_MEDIA_PORTS:
        problems.append(_where(settings.source, lines, "media", "port_min") +
                        f"media.port_min..port_max: {workers} media workers need at least "
                        f"{MIN_WORKER_MEDIA_PORTS} UDP ports each (the range is split between them)")
    return problems


MIN_WORKER_MEDIA_PORTS = 16
"""UDP ports a media worker gets at least (one per peer connection with BUNDLE)."""


def worker_port_ranges(port_min: int, port_max: int, workers: int) -> list[tuple[int, int]]:
    """``port_min..port_max`` split into ``workers`` contiguous slices, in order, the first ones one
    port larger when the range does not divide evenly."""
    size, extra = divmod(port_max - port_min + 1, workers)
    ranges = []
    start = port_min
    for i in range(workers):
        end = start + size + (1 if i < extra else 0) - 1
        ranges.append((start, end))
        start = end + 1
    return ranges


def _where(source: str, lines: Mapping[tuple[str, str], int], section: str, key: str) -> str:
    line = lines.get((section, key))
    if source and line:
        return f"{source}:{line}: "
    if source:
        return f"{source}: "
    return ""


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from an optional TOML file and the environment.

    Raises :class:`SettingsError` listing every problem found.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    lines: dict[tuple[str, str], int] = {}
    source = ""
    problems: list[str] = []
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError([f"{source}: not valid TOML: {exc}"]) from None
        lines = _key_lines(text)

    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTION_TYPES}
    for section, table in data.items():
        if section not in _SECTION_TYPES:
            problems.append(f"{_where(source, lines, section, '')}[{section}]: unknown section "
                            f"(known: {', '.join(_SECTION_TYPES)})")
            continue
        if not isinstance(table, dict):
            problems.append(f"{_where(source, lines, '', section)}{section}: must be a table")
            continue
        hints = typing.get_type_hints(_SECTION_TYPES[section])
        for key, value in table.items():
            where = _where(source, lines, section, key)
            if key not in hints:
                problems.append(f"{where}{section}.{key}: unknown key (known: {', '.join(hints)})")
                continue
            try:
                values[section][key] = _coerce(value, hints[key], from_env=False)
            except ValueError as exc:
                problems.append(f"{where}{section}.{key}: {exc}")

    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if "__" not in rest:
            continue
        section, key = (part.lower() for part in rest.split("__", 1))
        if section not in _SECTION_TYPES:
            problems.append(f"${name}: unknown section {section!r}")
            continue
        hints = typing.get_type_hints(_SECTION_TYPES[section])
        if key not in hints:
            problems.append(f"${name}: unknown key {section}.{key}")
            continue
        try:
            values[section][key] = _coerce(raw, hints[key], from_env=True)
        except ValueError as exc:
            problems.append(f"${name}: {section}.{key}: {exc}")

    if problems:
        raise SettingsError(problems)
    sections = {name: _SECTION_TYPES[name](**values[name]) for name in _SECTION_TYPES}
    settings = Settings(**sections, source=source)
    problems = _validate(settings, lines)
    if problems:
        raise SettingsError(problems)
    return settings


__all__ = ["Settings", "SettingsError", "load_settings", "ENV_PREFIX", "ALL_ROLES", "NodeRole", "media_address_of",
           "parse_smtp_url"] + [
    t.__name__ for t in (ServerSettings, MediaSettings, IceSettings, AuthSettings, StoreSettings, SfuSettings,
                         SignallingSettings, RecordingSettings, DevicesSettings, SmtpSettings, SmtpRelay,
                         SmtpSecurity)
]
