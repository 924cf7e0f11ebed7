"""Statistics of compiled programs: HLO op counts, opcodes, FLOPs, a fingerprint.

* **HLO op count.** :func:`hlo_op_count` counts the instructions of the *optimised* (compiled)
  HLO module, in every computation (the entry, fusion bodies, loop bodies, reducers), except
  the bookkeeping opcodes in :data:`BOOKKEEPING_OPCODES`. The same rule is applied to every
  system.
* **FLOPs** come from XLA's ``cost_analysis()`` of the compiled executable
  (:func:`compiled_stats`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Mapping

#: Opcodes not counted by :func:`hlo_op_count`: they move or name values, compute nothing.
BOOKKEEPING_OPCODES = frozenset({"parameter", "constant", "tuple", "get-tuple-element"})


def _skip_shape(text: str, start: int) -> int:
    """Index just past the HLO shape that begins at ``text[start]`` (tuple shapes nest)."""
    if text[start] != "(":
        end = text.find(" ", start)
        return len(text) if end < 0 else end
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def hlo_opcode(line: str) -> str | None:
    """The opcode of an HLO instruction line (``%name = shape opcode(...)``), else None."""
    stripped = line.strip()
    if stripped.startswith("ROOT "):
        stripped = stripped[len("ROOT ") :]
    name, sep, rest = stripped.partition(" = ")
    if not sep or not name or " " in name or not rest:
        return None
    after_shape = rest[_skip_shape(rest, 0) :].lstrip()
    opcode, paren, _ = after_shape.partition("(")
    if not paren or not opcode or " " in opcode:
        return None
    return opcode


def hlo_computations(text: str) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Computation name -> [(instruction, opcode, called computations)]; "ENTRY" is the entry."""
    comps: dict = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            if stripped.endswith("{") and "->" in stripped:
                name = stripped.split()[1] if stripped.startswith("ENTRY") else stripped.split()[0]
                current = "ENTRY" if stripped.startswith("ENTRY") else name.lstrip("%")
                comps[current] = []
            continue
        if stripped == "}":
            current = None
            continue
        opcode = hlo_opcode(line)
        if opcode is None:
            continue
        name = stripped.removeprefix("ROOT ").split(" = ")[0].lstrip("%")
        calls = re.findall(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)", stripped)
        comps[current].append((name, opcode, calls))
    return comps


def hlo_opcodes(hlo_text: str) -> Counter:
    """Counts the opcodes of every instruction in every computation of an HLO module's text."""
    return Counter(op for comp in hlo_computations(hlo_text).values() for _, op, _ in comp)


def hlo_op_count(hlo_text: str) -> int:
    """The number of instructions, except :data:`BOOKKEEPING_OPCODES`, in all computations."""
    counts = hlo_opcodes(hlo_text)
    return sum(n for op, n in counts.items() if op not in BOOKKEEPING_OPCODES)


def normalized_hlo(hlo_text: str) -> str:
    """HLO module text without its header, metadata and names, to compare two programs.

    Drops everything before the first computation (module name, source file tables) and the
    ``metadata={...}`` attributes, and renames every ``%name`` (instructions and
    computations) by order of first appearance. Two modules with equal normalised text run
    the same instructions, on the same shapes, in the same order.
    """
    text = re.sub(r",? ?metadata=\{[^}]*\}", "", hlo_text)
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.rstrip().endswith("{") and "->" in line
         and not line.startswith("HloModule")),
        0,
    )  # fmt: skip
    names: dict[str, str] = {}
    return re.sub(
        r"%[\w.\-]+",
        lambda m: names.setdefault(m.group(0), f"%v{len(names)}"),
        "\n".join(lines[start:]),
    )


def _cost_entry(cost, key: str) -> float:
    """``key`` of a ``cost_analysis()`` result (a dict, a list of dicts, or None), else NaN."""
    if cost is None:
        return float("nan")
    if isinstance(cost, Mapping):
        cost = [cost]
    values = [c[key] for c in cost if isinstance(c, Mapping) and key in c]
    return float(sum(values)) if values else float("nan")


@dataclasses.dataclass(frozen=True)
class CompiledStats:
    """Statistics of one compiled executable.

    Attributes:
      op_count: instructions counted by :func:`hlo_op_count`.
      flops: XLA's ``cost_analysis()["flops"]`` (NaN when not reported).
      transcendentals: XLA's ``cost_analysis()["transcendentals"]`` (NaN when not reported).
      opcodes: every opcode with its count (bookkeeping included), for diagnosis.
      fingerprint: a hash of :func:`normalized_hlo`; equal fingerprints mean the same
        optimised program up to names and metadata.
    """

    op_count: int
    flops: float
    transcendentals: float
    opcodes: Counter
    fingerprint: str


def compiled_stats(jitted_fn, *args) -> CompiledStats:
    """Lowers and compiles ``jitted_fn`` for ``args``; counts its HLO ops and FLOPs.

    Args:
      jitted_fn: a ``jax.jit``-wrapped function.
      *args: example arguments (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      A :class:`CompiledStats`.
    """
    compiled = jitted_fn.lower(*args).compile()
    text = compiled.as_text()
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        cost = None
    return CompiledStats(
        op_count=hlo_op_count(text),
        flops=_cost_entry(cost, "flops"),
        transcendentals=_cost_entry(cost, "transcendentals"),
        opcodes=hlo_opcodes(text),
        fingerprint=hashlib.sha256(normalized_hlo(text).encode()).hexdigest()[:16],
    )
