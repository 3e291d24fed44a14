"""``teleconsult recording export|verify``: the recordings under ``server.data_dir``.

The options are a contract (scripts call them): options are added, never renamed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.settings import Settings
from media.recording.store import RecordingNotFound, RecordingStore
from media.recording.vault import Vault


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``teleconsult recording export|verify`` (a contract: options are added, never renamed)."""
    rec = sub.add_parser("recording", help="recordings under server.data_dir: export, verify")
    rec_sub = rec.add_subparsers(dest="recording_command", required=True)
    export = rec_sub.add_parser("export", help="one multi-track Matroska file (remux, no transcoding)")
    export.add_argument("consultation_id")
    export.add_argument("--out", required=True, metavar="FILE")
    export.set_defaults(func=cmd_export)
    verify = rec_sub.add_parser("verify", help="decode every track; frames, duration and gaps (exit 1 if not ok)")
    verify.add_argument("consultation_id")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_verify)


def _cli_store(settings: Settings) -> RecordingStore:
    vault = Vault.from_settings(settings.recording, data_dir=settings.server.data_dir)
    return RecordingStore.for_data_dir(settings.server.data_dir, vault,
                                       retention_days=settings.recording.retention_days)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    try:
        store = _cli_store(settings)
        out = store.export(args.consultation_id, Path(args.out))
    except RecordingNotFound:
        print(f"no recording {args.consultation_id}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.consultation_id} to {out}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = _cli_store(settings).verify(args.consultation_id)
    except RecordingNotFound:
        print(f"no recording {args.consultation_id}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"verify failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"recording {report.consultation_id}: {'ok' if report.ok else 'NOT OK'}")
        for t in report.tracks:
            print(f"  {t.file}  {t.source}  {t.codec}  frames {t.decoded_frames} decoded / {t.packets} packets / "
                  f"{t.frames_expected} expected  duration {t.duration_s:.3f} s  gaps {len(t.gaps)}"
                  f"{'  decode errors ' + str(t.decode_errors) if t.decode_errors else ''}"
                  f"{'  ERROR ' + t.error if t.error else ''}  {'ok' if t.ok else 'NOT OK'}")
            for gap in t.gaps:
                print(f"    gap at {gap.at_s:.3f} s: {gap.length_s:.3f} s")
    return 0 if report.ok else 1
