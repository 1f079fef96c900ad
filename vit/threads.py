"""Sharing the CPU: how PyTorch's OpenMP threads wait, --threads, and a note when other programs take the cores.

PyTorch runs each operator in one OpenMP thread per core. At an operator's end the threads that finished first
spin, waiting for the others; libgomp's default spin (300,000 rounds) is harmless alone, but when another program
holds a core, a spinning thread burns the time slice its partner needs, and an epoch took 16 times as long beside
a second training run (docs/performance.md, "Sharing the CPU"). A short spin before sleeping keeps the speed alone
and makes two runs share the cores fairly. The setting is read once, when torch loads its OpenMP library, so the
scripts call share_cores() before they import torch.
"""
import os
import sys
import time

SPIN = {  # what each OpenMP runtime reads: libgomp (PyTorch's Linux wheels), LLVM's and Intel's (macOS, conda)
    "GOMP_SPINCOUNT": "1000",   # rounds of spinning before a waiting thread sleeps (libgomp's default: 300,000)
    "KMP_BLOCKTIME": "1",       # milliseconds of the same (LLVM's and Intel's default: 200)
}
OWN = ("OMP_WAIT_POLICY", *SPIN)  # set by the user: left as they are
BUSY = 0.5  # cores that other programs used on average during an epoch, from which a run says it shares the CPU
LONG = 5.0  # seconds: shorter epochs are not judged (a slow one costs little, and a blip looks like a share)


def share_cores():
    """Make PyTorch's OpenMP threads sleep soon after they finish waiting (SPIN), unless the environment already
    says how they wait. Only before torch is imported: afterwards its OpenMP library has read the environment."""
    if "torch" in sys.modules or any(k in os.environ for k in OWN):
        return
    os.environ.update(SPIN)


def cpu_times():
    """(seconds the machine's cores were busy, seconds this process ran) so far, from /proc/stat and os.times();
    (None, None) where the system has no /proc/stat (macOS, Windows)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and waiting for the disk
    busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user .. steal (guest time is counted in user)
    mine = os.times()
    return busy, mine.user + mine.system


class CpuShare:
    """How many cores other programs kept busy since the last call: others(). Linux only (None elsewhere)."""

    def __init__(self):
        self.start = (time.perf_counter(), *cpu_times())

    def others(self):
        now = (time.perf_counter(), *cpu_times())
        (t0, busy0, mine0), (t1, busy1, mine1), self.start = self.start, now, now
        if busy0 is None or busy1 is None or t1 <= t0:
            return None
        return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (t1 - t0)


def busy_note(others, seconds, threads, epoch):
    """The line a run prints once when other programs used `others` cores during `epoch` of `seconds`, or None below
    BUSY or LONG."""
    if others is None or others < BUSY or seconds < LONG:
        return None
    cores = os.cpu_count() or 1
    one = "; two trainings at once: give each --threads 1" if threads > 1 else ""
    return (f"note: other programs kept {min(others, cores):.1f} of the {cores} cores busy during epoch {epoch}: this "
            f"run shares the CPU and is slower than alone (docs/performance.md#sharing-the-cpu){one}")
