"""Fuzzing: 100 random stochastic computation graphs, 24 edge programs (piecewise
operations on reparameterised sites, keys that may collide) and 6 programs with
collectives on a 4-device CPU mesh, fixed seeds, against exact answers.

See ``tests/fuzz.py`` for the generator and the checks; ``python tests/fuzz.py --programs
1000`` runs a longer sample and prints how many programs passed; ``python tests/fuzz_mesh.py
--programs 200`` does the same for collectives inside ``shard_map``.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from fuzz import EDGE_FORMS, check, check_edge, generate, generate_edge, z_threshold

PROGRAMS = 100
EDGE_PROGRAMS = 24
Z = z_threshold(PROGRAMS * 50)  # Bonferroni over programs and coordinates
EDGE_Z = z_threshold(EDGE_PROGRAMS * 60)


@pytest.mark.parametrize("seed", range(PROGRAMS))
def test_random_program_matches_exact_answers(seed):
    program = generate(seed)
    problems = check(program, n=20_000, z=Z, hessian=seed % 3 == 0)
    assert not problems, f"{program}\n" + "\n".join(problems)


@pytest.mark.parametrize("seed", range(EDGE_PROGRAMS))
def test_random_edge_program_is_unbiased_or_refused(seed):
    program = generate_edge(seed)
    problems = check_edge(program, n=10_000, z=EDGE_Z)
    assert not problems, f"{program}\n" + "\n".join(problems)


def test_edge_generator_covers_every_fragment():
    programs = [generate_edge(seed) for seed in range(EDGE_PROGRAMS)]
    assert {t.form for p in programs for t in p.terms} == set(EDGE_FORMS)
    collide = [p.collision() is not None for p in programs]
    assert 3 <= sum(collide) <= EDGE_PROGRAMS - 12
    assert {k[0] for p in programs for k in p.keying} == {"split", "fold"}
    assert {e for p in programs for e in p.estimators} == {"auto", "pathwise"}
    assert any(p.hessian_ok for p in programs) and not all(p.hessian_ok for p in programs)


def test_generator_covers_every_fragment():
    programs = [generate(seed) for seed in range(PROGRAMS)]
    kinds = {s.kind for p in programs for s in p.sites}
    assert kinds == {"bern", "cat", "vec", "normal"}
    assert {s.estimator for p in programs for s in p.sites if s.kind == "normal"} == {
        "score_function",
        "auto",
    }
    wraps = {c.wrap for p in programs for c in p.costs}
    assert wraps == {"", "jit", "cond"}
    loops = [p.loop for p in programs if p.loop is not None]
    assert len(loops) >= 10
    assert all(
        any(getattr(lp, f) for lp in loops)
        for f in ("carried", "reverse", "baseline", "param_dynamics")
    )
    assert any(lp.envs > 1 for lp in loops) and any(lp.steps == 3 for lp in loops)
    assert sum(not p.has_pathwise and p.scan_parent < 0 for p in programs) >= 30  # exact checks


def test_random_mesh_programs_are_unbiased():
    """Collectives inside shard_map (``tests/fuzz_mesh.py``), in a subprocess: the forced CPU
    devices must be set before JAX starts."""
    script = Path(__file__).with_name("fuzz_mesh.py")
    result = subprocess.run(
        [sys.executable, str(script), "--programs", "6", "--samples", "4000"],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "6 of 6 mesh programs passed" in result.stdout
    counts = ast.literal_eval(re.search(r"fragments: (\{.*\})", result.stdout).group(1))
    assert all(n > 0 for n in counts.values()), counts  # every collective and site kind


def test_importing_the_mesh_fuzzer_leaves_jax_as_it_was():
    """Pytest imports every file under tests/ for doctests: the fuzzer's float64 and forced
    devices are for its own process only (a module-level switch once made other tests fail)."""
    import fuzz_mesh  # noqa: F401

    assert not jax.config.jax_enable_x64
    assert "--xla_force_host_platform_device_count=4" not in os.environ.get("XLA_FLAGS", "")
