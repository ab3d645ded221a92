"""The GPU's power draw and SM clock while a benchmark runs, from `nvidia-smi`'s sampling loop.

Why: the compiled forward runs the official path's own cuBLAS kernels 4-5 % slower. If the H100 sits at its
power cap there (and the official path, with its cheap elementwise kernels between matmuls, does not), the
same kernels get a lower clock, and time per forward follows energy per forward rather than kernel quality.

    with PowerSampler() as power:
        ...                      # the work
    power.summary()              # {"samples", "watts_mean", "sm_mhz_median", "power_capped_share", ...}
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time

QUERY = "power.draw,clocks.sm,clocks_event_reasons.active,temperature.gpu"
SW_POWER_CAP = 0x4
"""`clocks_event_reasons.active` bit: clocks lowered to stay under the software power limit."""
HW_SLOWDOWN = 0x8 | 0x40 | 0x80
"""Bits for hardware slowdown, hardware thermal and power-brake slowdown."""
SW_THERMAL = 0x20


class PowerSampler:
    """Samples GPU `index` every `interval_ms` in an `nvidia-smi` child process (ours, stopped by its PID)."""

    def __init__(self, index: int = 0, interval_ms: int = 20) -> None:
        self.index = index
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float, int, float]] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> PowerSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        self._process = subprocess.Popen(
            [
                "nvidia-smi",
                f"--id={self.index}",
                f"--query-gpu={QUERY}",
                "--format=csv,noheader,nounits",
                f"-lms={self.interval_ms}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.3)  # the first sample comes after nvidia-smi's start-up
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            fields = [f.strip() for f in line.split(",")]
            try:
                self.samples.append((float(fields[0]), float(fields[1]), int(fields[2], 16), float(fields[3])))
            except (ValueError, IndexError):
                continue

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def summary(self) -> dict:
        if not self.samples:
            return {"samples": 0}
        watts = [s[0] for s in self.samples]
        mhz = [s[1] for s in self.samples]
        share = lambda bits: round(sum(1 for s in self.samples if s[2] & bits) / len(self.samples), 2)  # noqa: E731
        return {
            "samples": len(self.samples),
            "watts_mean": round(statistics.fmean(watts), 1),
            "watts_max": round(max(watts), 1),
            "sm_mhz_median": statistics.median(mhz),
            "sm_mhz_min": min(mhz),
            "power_capped_share": share(SW_POWER_CAP),
            "thermal_or_hw_slowdown_share": share(SW_THERMAL | HW_SLOWDOWN),
            "temperature_c_max": max(s[3] for s in self.samples),
        }
