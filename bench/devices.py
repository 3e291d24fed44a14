"""Per-frame processing cost of the device chains against their frame budgets.

    python -m bench.devices [--json FILE] [--seconds S]

Targets: stethoscope chain <= 1 % of a 20 ms frame; dermatoscope colour correction
<= 5 ms per 1920x1080 frame; otoscope chain <= 3 ms per 1280x720 input frame.
Medians; the colour correction's CPU time per frame (all threads) is printed too, a
steadier figure than wall-clock time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable

import numpy as np

from devices.colour import ColourCorrection, patch_means
from devices.dermatoscope import DermatoscopeAdapter
from devices.otoscope import OtoscopeAdapter
from devices.simulated import DermatoscopeScene, OtoscopeScene, PhonocardiogramSimulator
from devices.stethoscope import StethoscopeChain

logger = logging.getLogger(__name__)

TARGETS = {
    "stethoscope_frame_budget_pct": 1.0,
    "dermatoscope_1080p_ms_per_frame": 5.0,
    "otoscope_720p_ms_per_frame": 3.0,
}


def _time_per_call(fn: Callable[[], object], seconds: float, min_calls: int = 5) -> float:
    """Median seconds per call over batches filling ``seconds`` (median: the machine is shared)."""
    return _times_per_call(fn, seconds, min_calls)[0]


def _times_per_call(fn: Callable[[], object], seconds: float, min_calls: int = 5) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds per call (CPU: all the process's
    threads, OpenCV's and the colour worker's included; steadier than wall-clock time on
    a busy machine)."""
    fn()
    samples: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_calls or time.perf_counter() < deadline:
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(samples)), float(np.median(cpu))


def run(seconds: float = 1.0) -> dict[str, float]:
    per = seconds / 4
    sim = PhonocardiogramSimulator(72.0, channels=2, seed=0)
    frames = [sim.read() for _ in range(500)]
    chain = StethoscopeChain(2)
    index = iter(range(10**9))
    steth = _time_per_call(lambda: chain.process(frames[next(index) % len(frames)]), per, 50)

    scene = DermatoscopeScene(1920, 1080, seed=0)
    raw = scene.read()
    correction = ColourCorrection.fit(patch_means(raw, scene.chart_patch_boxes))
    out = np.empty_like(raw)
    derm, derm_cpu = _times_per_call(lambda: correction.apply(raw, out=out), per, 20)
    derm_adapter = DermatoscopeAdapter(scene, (1920, 1080), chart_patches=scene.chart_patch_boxes)
    derm_adapter.calibrate(raw)
    derm_chain = _time_per_call(lambda: derm_adapter.process(raw), per)

    oto_scene = OtoscopeScene(1280, 720, seed=0)
    oto_frame = oto_scene.read()
    oto = OtoscopeAdapter(oto_scene, (1280, 720))
    oto_ms = _time_per_call(lambda: oto.process(oto_frame), per)
    return {
        "stethoscope_frame_budget_pct": round(100 * steth / 0.020, 3),
        "stethoscope_us_per_frame": round(steth * 1e6, 1),
        "dermatoscope_1080p_ms_per_frame": round(derm * 1e3, 3),
        "dermatoscope_1080p_cpu_ms_per_frame": round(derm_cpu * 1e3, 3),
        "dermatoscope_stream_chain_ms_per_frame": round(derm_chain * 1e3, 3),
        "otoscope_720p_ms_per_frame": round(oto_ms * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devices", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time in all (default 1)")
    args = parser.parse_args(argv)
    figures = run(args.seconds)
    for key, value in figures.items():
        target = TARGETS.get(key)
        verdict = "" if target is None else f"  target <= {target:g}  {'ok' if value <= target else 'OVER'}"
        print(f"{key:42s} {value:10.3f}{verdict}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**figures, "targets": TARGETS}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
