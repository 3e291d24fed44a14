"""The network bench's uplink log: the RTP headers of each packet leaving the cabin's veth.

::

    python -m bench.netsniff --dev cab0 --seconds S --out FILE

Run by :mod:`bench.network` inside the lab's cabin namespace. An ``AF_PACKET`` socket on the
device sees each outgoing frame as the device transmits it: after nftables' random drop and
after tbf's queue. SRTP leaves the RTP header in clear, so each UDP datagram that looks like
RTP (version 2, not an RTCP packet type) is logged as ``[monotonic time, ssrc, payload type,
seq, timestamp, IP bytes]``. It prints ``ready`` once listening, and stops after
``--seconds`` or on SIGINT, then writes what it logged.

What the bench takes from it: how late the stethoscope's packets leave the cabin against
their own RTP timeline (the agent, its pacer and the uplink's queue), apart from the rest of
the path (the server, the SFU, the subscriber).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from typing import Any

ETH_P_ALL = 0x0003
ETH_HEADER = 14
RTCP_TYPES = range(72, 77)
"""RTCP packet types 200-204 as the second byte's low 7 bits (SR, RR, SDES, BYE, APP)."""


def parse(frame: bytes) -> tuple[int, int, int, int, int] | None:
    """(ssrc, payload type, seq, timestamp, IP bytes) of an Ethernet frame carrying an RTP
    packet over IPv4/UDP; None otherwise."""
    if len(frame) < ETH_HEADER + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17 or len(ip) < ihl + 8 + 12:
        return None
    rtp = ip[ihl + 8:]
    if rtp[0] & 0xC0 != 0x80 or rtp[1] & 0x7F in RTCP_TYPES:
        return None
    return (int.from_bytes(rtp[8:12], "big"), rtp[1] & 0x7F, int.from_bytes(rtp[2:4], "big"),
            int.from_bytes(rtp[4:8], "big"), len(ip))


def sniff(dev: str, seconds: float) -> list[list[Any]]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((dev, 0))
    sock.settimeout(0.25)
    print("ready", flush=True)
    out: list[list[Any]] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:  # or until SIGINT (the bench stops it so)
            try:
                frame, address = sock.recvfrom(65535)
            except socket.timeout:
                continue
            if address[2] != socket.PACKET_OUTGOING:
                continue
            fields = parse(frame)
            if fields is not None:
                out.append([round(time.monotonic(), 6), *fields])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netsniff", description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    # The bench stops it with SIGINT; a process started in the background by a shell inherits SIGINT
    # ignored, and Python then leaves it so: the handler is set here whatever it inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    packets = sniff(args.dev, args.seconds)
    with open(args.out, "w") as fh:
        json.dump({"packets": packets}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
