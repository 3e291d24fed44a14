"""The network bench's nurse camera: headless Chromium in the cabin namespace, publishing its
fake camera and microphone over WHIP, its outbound video rate sampled every second.

::

    python -m bench.netnurse --base URL --room ROOM --token TOKEN --namespace NS --seconds S --out FILE

Chromium runs in the lab's cabin namespace through a small wrapper executable
(``ip netns exec NS /usr/bin/chromium "$@"``), so its media share the shaped uplink with
the device agent; Playwright drives it from here over the DevTools pipe. It is Chromium's
own encoder and congestion control (what the SFU's feedback must steer), not the nurse
page: the page needs a live consultation, the bench's rooms are standalone. It prints
``ready <monotonic time>`` once published, then writes ``samples``: ``[monotonic time,
video bytesSent, targetBitrate or null, qualityLimitationReason]`` per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

PUBLISH = """
async ([path, token]) => {
  const stream = await navigator.mediaDevices.getUserMedia(
      {video: {width: 640, height: 480, frameRate: 30}, audio: true});
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: 'sendonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 3000);
  });
  const r = await fetch(path, {method: 'POST', body: pc.localDescription.sdp,
      headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token}});
  const answer = await r.text();
  if (r.status !== 201) return 'WHIP ' + r.status + ': ' + answer.slice(0, 200);
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  window.__nurse = pc;
  return 'ok';
}
"""

STATS = """
async () => {
  const pc = window.__nurse;
  let out = [null, null, null, pc.connectionState];
  (await pc.getStats()).forEach(s => {
    if (s.type === 'outbound-rtp' && s.kind === 'video')
      out = [s.bytesSent, s.targetBitrate ?? null, s.qualityLimitationReason ?? null, pc.connectionState];
  });
  return out;
}
"""


def wrapper(namespace: str, folder: Path) -> Path:
    """The executable Playwright starts: Chromium inside ``namespace``."""
    path = folder / "chromium-in-netns"
    path.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-nurse-"))
    samples: list[list[Any]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(wrapper(args.namespace, folder)), headless=True,
            args=ARGS + [f"--unsafely-treat-insecure-origin-as-secure={args.base}"])
        try:
            page = await browser.new_page()
            await page.goto(f"{args.base}/readyz")
            status = await page.evaluate(PUBLISH, [f"/whip/{args.room}?source=camera&source=microphone", args.token])
            if status != "ok":
                return {"ok": False, "error": status, "samples": []}
            ready = time.monotonic()
            print(f"ready {ready:.6f}", flush=True)
            deadline = ready + args.seconds
            while time.monotonic() < deadline:
                sent, target, reason, state = await page.evaluate(STATS)
                samples.append([round(time.monotonic(), 3), sent, target, reason, state])
                await asyncio.sleep(1.0)
        finally:
            await browser.close()
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()
    return {"ok": True, "start": ready, "samples": samples}


def outbound_kbps(samples: list[list[Any]], start: float, settle_s: float = 10.0) -> float | None:
    """Mean video rate Chromium sent from ``settle_s`` after ``start`` to the last sample, kbit/s."""
    points = [(t, sent) for t, sent, *_ in samples if sent is not None and t >= start + settle_s]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) * 8 / 1000 / (points[-1][0] - points[0][0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netnurse", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        parser.error(f"{CHROMIUM} is missing")
    result = asyncio.run(run(args))
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
