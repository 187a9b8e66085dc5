"""Shared helpers for the benchmark scripts: peak resident memory of a code section, timing tables."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Section:
    seconds: float = 0.0
    peak_rss: int = 0


@contextmanager
def measured() -> Iterator[Section]:
    """Wall time and peak resident memory (sampled every 20 ms) of the enclosed block."""
    section = Section(peak_rss=resident_bytes())
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            section.peak_rss = max(section.peak_rss, resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield section
    finally:
        section.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        section.peak_rss = max(section.peak_rss, resident_bytes())


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print(" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * width for width in widths))
