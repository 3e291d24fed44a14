"""The ``teleconsult`` command line.

These command lines are a contract that tools outside the code rely on:
options are added, never renamed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import uvloop

from config.settings import Settings, SettingsError, load_settings
from core import logs
from core.auth import TokenService
from core.keyring import MasterKeyError
from core.vocabulary import Role
from devices.agent import add_agent_command
from media.recording.cli import add_commands as add_recording_commands
from teleconsult.demo import add_demo_command
from teleconsult.production import is_production, production_problems
from teleconsult.server import serve
from teleconsult.tls import write_self_signed
from teleconsult.workers import worker_command

logger = logging.getLogger("teleconsult")

EXIT_CONFIG = 2
ROOM_ROLES = (Role.NURSE, Role.PHYSICIAN, Role.AGENT)
"""Who may hold a room token (an admin never joins a room)."""

Command = Callable[[argparse.Namespace, Settings], int]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


# -- serve -------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    server = {}
    if args.host:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.media_workers is not None:
        server["media_workers"] = args.media_workers
    media = {}
    if args.media_address:
        media = {"listen_ip": args.media_address, "announced_ip": args.media_address}
        if args.media_address.startswith("127."):
            media["allowed_remote_networks"] = ["127.0.0.0/8"]
    settings = settings.replace(server=server, media=media)
    if is_production(settings):
        problems = production_problems(settings)
        if problems:
            for problem in problems:
                print(f"{settings.source or 'settings'}: production (public_url is https): {problem}", file=sys.stderr)
            return EXIT_CONFIG
    logs.configure(settings.server.log_format, settings.server.log_level)
    return uvloop.run(serve(settings, worker_command=worker_command(args.config, args.host, args.media_address)))


# -- token -------------------------------------------------------------------
def _tokens(settings: Settings) -> TokenService:
    return TokenService(settings.auth, settings.server.data_dir)


def cmd_token_access(args: argparse.Namespace, settings: Settings) -> int:
    token = _tokens(settings).issue_access(
        args.role, args.sub, site=args.site, specialties=_csv(args.specialty or ""),
        name=args.name or "", ttl=args.ttl)
    if args.link:
        # Each role has its page, named after it.
        print(f"{settings.base_url}/{Role(args.role).value}#token={token}")
    else:
        print(token)
    return 0


def cmd_token_room(args: argparse.Namespace, settings: Settings) -> int:
    token = _tokens(settings).issue_room(
        args.room, args.identity, role=args.role, publish=_csv(args.publish or ""),
        subscribe=args.subscribe, command=args.command, ttl=args.ttl)
    print(token)
    return 0


# -- check-config --------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.production or is_production(settings):
        problems = production_problems(settings)
        for problem in problems:
            print(f"{args.file}: production: {problem}", file=sys.stderr)
        if problems:
            return EXIT_CONFIG
        print(f"{args.file}: ok for production")
        return 0
    print(f"{args.file}: ok")
    return 0


# -- tls-selfsigned ------------------------------------------------------------
def cmd_tls_selfsigned(args: argparse.Namespace) -> int:
    cert, key = write_self_signed(Path(args.out), args.name or ["localhost"])
    print(f"certificate: {cert}\nkey:         {key}")
    print("set [server] tls_cert and tls_key to these paths (development and LAN trials only)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teleconsult", description="Real-time video teleconsultation")
    parser.add_argument("--config", metavar="FILE", help="TOML settings (environment TELECONSULT_<SECTION>__<KEY> overrides)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser(
        "serve", help="run signalling, SFU and web pages in one process (or beside N media workers)",
        description="Run signalling, SFU and web pages in one process. With --media-workers N (N > 1, the "
                    "Redis store) this process runs the signalling and the pages only and starts N SFU "
                    "worker processes, each a media node of the store's registry with HTTP port PORT + i "
                    "(free ones when PORT is 0) and 1/N of media.port_min..port_max; rooms go to the least "
                    "loaded worker. A worker that dies is started again and its rooms are re-placed on the "
                    "others (room.moved); SIGTERM/SIGINT are passed to the workers (drain, then stop).")
    serve_p.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, help="HTTP port (default 8080; 0 picks a free one)")
    serve_p.add_argument("--media-address", metavar="IP", help="bind and announce WebRTC media on this address only")
    serve_p.add_argument("--media-workers", type=int, metavar="N",
                         help="SFU processes beside the signalling (default 1: one process does both; more "
                              "needs store.backend = \"redis\"); sets server.media_workers")
    serve_p.set_defaults(func=cmd_serve)

    token_p = sub.add_parser("token", help="sign tokens with the configured key")
    token_sub = token_p.add_subparsers(dest="token_kind", required=True)
    access = token_sub.add_parser("access", help="an access token for a person or a device agent")
    access.add_argument("--role", required=True, choices=[r.value for r in Role])
    access.add_argument("--sub", required=True, help="subject id (no personal data)")
    access.add_argument("--site", help="site id (nurse, agent)")
    access.add_argument("--specialty", help="comma-separated specialties (physician)")
    access.add_argument("--name", help="display name")
    access.add_argument("--ttl", type=int, help="seconds of validity")
    access.add_argument("--link", action="store_true", help="print a sign-in URL instead of the token")
    access.set_defaults(func=cmd_token_access)
    room = token_sub.add_parser("room", help="a room token with explicit grants")
    room.add_argument("room")
    room.add_argument("--identity", required=True)
    room.add_argument("--role", default="physician", choices=[r.value for r in ROOM_ROLES])
    room.add_argument("--publish", help="comma-separated sources it may publish")
    room.add_argument("--subscribe", action="store_true", help="may subscribe to the room's tracks")
    room.add_argument("--command", action="store_true", help="may send device commands")
    room.add_argument("--ttl", type=int, help="seconds of validity")
    room.set_defaults(func=cmd_token_room)

    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("file")
    check.add_argument("--production", action="store_true",
                       help="also refuse what a public setup must not run with (development keys, the example "
                            "TURN secret, health data in clear); implied when public_url is https")
    check.set_defaults(func=cmd_check_config, no_settings=True)

    tls = sub.add_parser("tls-selfsigned", help="make a self-signed certificate for a LAN trial")
    tls.add_argument("--out", default="tls", help="folder for cert.pem and key.pem")
    tls.add_argument("--name", action="append", help="host name or IP (repeatable)")
    tls.set_defaults(func=cmd_tls_selfsigned, no_settings=True)

    for extend in _EXTENSIONS:
        extend(sub)
    return parser


# Subcommands owned by other packages.
_EXTENSIONS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (  # type: ignore[type-arg]
    add_recording_commands, add_agent_command, add_demo_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_settings", False):
        return int(args.func(args))
    try:
        settings = _load(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return int(args.func(args, settings))
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except (ValueError, MasterKeyError) as exc:
        print(f"teleconsult: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
