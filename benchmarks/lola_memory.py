"""Where the LOLA-DiCE update's memory goes: jax_scg against the best hand-written form.

Run from the repository root::

    python benchmarks/lola_memory.py            # 150 rounds, batch 128, 1-3 look-aheads
    python benchmarks/lola_memory.py --quick    # smoke test, tiny sizes

``benchmarks/lola.py`` reports the bytes XLA assigns to each compiled update
(``compiled.memory_analysis()``). This script says which values make the difference. Each
system's update (the same functions as ``lola.py``) is compiled in a subprocess with
``XLA_FLAGS=--xla_dump_to=DIR``; from XLA's own buffer assignment (each value's offset and
size) and live ranges (each value's first and last instruction in the schedule) it finds the
instruction where the most bytes are live (overlapping offsets counted once: values that
share a buffer, such as a loop's carry, are one allocation) and counts, at that point, the
live arrays of the episodes' shape ``rounds × batch``.

The table gives, per look-ahead count, both programs' temp bytes, the gap, and the
``rounds × batch`` arrays live at each one's peak. Results are printed as markdown and
written to ``--out`` (default ``benchmarks/results/lola_memory_<platform>.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

SYSTEMS = ("jax_scg", "hand, best")
_VALUE = re.compile(r"value: <\d+ (\S+) @0> \(size=(\d+),offset=(\d+)\): (\S+)")
_RANGE = re.compile(r"^\s+(\S+):(\d+)-(\d+)$", re.M)
_INSTRUCTION = re.compile(r"^\s+(\d+):(\S+)$", re.M)


@dataclasses.dataclass(frozen=True)
class Peak:
    """One compiled program's heap peak, from XLA's dump."""

    temp_bytes: int  # the preallocated temp buffer (``memory_analysis().temp_size_in_bytes``)
    peak_bytes: int  # the most bytes live at one instruction (overlaps counted once)
    instruction: str  # the instruction at which they are live
    episode_arrays: int  # live values of shape f32[rounds, batch] there


def compile_one(system: str, lookaheads: int, steps: int, batch: int) -> None:
    """Compiles one system's update (in this process, whose XLA_FLAGS name the dump)."""
    import jax
    import lola

    fns = lola.systems(lookaheads, steps, batch, "episode")
    update = jax.jit(lola.update_from(fns[system]))
    args = (*lola.arguments(jax.random.key(3)), jax.random.key(0))
    stats = update.lower(*args).compile().memory_analysis()
    print(json.dumps({"temp": stats.temp_size_in_bytes}))


def _union_bytes(intervals) -> int:
    total, end = 0, -1
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def read_peak(dump_dir: str, temp_bytes: int, steps: int, batch: int) -> Peak:
    """The peak of the largest ``*update*`` module dumped in ``dump_dir``."""
    (assignment,) = [
        f
        for f in glob.glob(os.path.join(dump_dir, "*jit_update*buffer-assignment.txt"))
        if "-values" not in f
    ]
    live_range = assignment.replace("buffer-assignment.txt", "live-range.txt")
    values = {}
    for name, size, offset, shape in _VALUE.findall(open(assignment).read()):
        values[name] = (int(offset), int(size), shape.split("{")[0])
    sequence, ranges = open(live_range).read().split("BufferLiveRange:")
    instructions = dict(_INSTRUCTION.findall(sequence))
    live = []
    for name, start, stop in _RANGE.findall(ranges):
        name = name[:-2] if name.endswith("{}") else name
        if name in values:
            live.append((int(start), int(stop), *values[name]))
    horizon = max(stop for _, stop, *_ in live) + 1
    at = [[] for _ in range(horizon)]
    for start, stop, offset, size, shape in live:
        for t in range(start, stop + 1):
            at[t].append((offset, size, shape))
    used = [_union_bytes((o, o + s) for o, s, _ in vals) for vals in at]
    peak = max(range(horizon), key=used.__getitem__)
    episode_shape = f"f32[{steps},{batch}]"
    episode = {(o, s) for o, s, shape in at[peak] if shape == episode_shape}
    return Peak(temp_bytes, used[peak], instructions.get(str(peak), "?"), len(episode))


def measure(system: str, lookaheads: int, steps: int, batch: int) -> Peak:
    """Compiles one system in a subprocess that dumps its HLO, and reads the dump."""
    with tempfile.TemporaryDirectory() as dump_dir:
        flags = f"--xla_dump_to={dump_dir} --xla_dump_hlo_module_re=.*update.*"
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags)}
        argv = [sys.executable, os.path.abspath(__file__), "--one", system]
        argv += [str(lookaheads), str(steps), str(batch)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        temp = json.loads(proc.stdout.strip().splitlines()[-1])["temp"]
        return read_peak(dump_dir, temp, steps, batch)


def rows(results: dict, steps: int, batch: int) -> list[list[str]]:
    array_kib = 4 * steps * batch / 1024
    out = []
    for lookaheads, peaks in results.items():
        scg, hand = peaks["jax_scg"], peaks["hand, best"]
        extra = scg.episode_arrays - hand.episode_arrays
        out.append(
            [
                str(lookaheads),
                f"{scg.temp_bytes / 1024:.1f} / {hand.temp_bytes / 1024:.1f}",
                f"{(scg.temp_bytes - hand.temp_bytes) / 1024:.1f}",
                f"{scg.peak_bytes / 1024:.1f} / {hand.peak_bytes / 1024:.1f}",
                f"{scg.episode_arrays} / {hand.episode_arrays}",
                f"{extra} ({extra * array_kib:.1f} KiB)",
                f"{scg.instruction} / {hand.instruction}",
            ]
        )
    return out


def main(argv=None) -> int:
    parser = harness.arg_parser(__doc__)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # internal: one compile
    args = parser.parse_args(argv)
    if args.one:
        system, lookaheads, steps, batch = args.one
        compile_one(system, int(lookaheads), int(steps), int(batch))
        return 0
    steps, batch, counts = (8, 4, (1,)) if args.quick else (150, 128, (1, 2, 3))
    out = args.out or harness.results_path("lola_memory")
    results = {}
    for lookaheads in counts:
        results[lookaheads] = {s: measure(s, lookaheads, steps, batch) for s in SYSTEMS}
        print(f"compiled {lookaheads} look-ahead(s)", flush=True)
    text = harness.print_table(
        [
            "look-aheads",
            "temp KiB jax_scg / hand",
            "gap KiB",
            "live at peak KiB",
            f"f32[{steps},{batch}] arrays at peak",
            "extra in jax_scg",
            "peak instruction",
        ],
        rows(results, steps, batch),
        title=f"LOLA-DiCE update memory at XLA's heap peak ({steps} rounds, batch {batch})",
    )
    harness.write_report(out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
