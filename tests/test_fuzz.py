"""Fuzzing: 100 random stochastic computation graphs (fixed seeds) against exact answers.

See ``tests/fuzz.py`` for the generator and the checks; ``python tests/fuzz.py --programs
1000`` runs a longer sample and prints how many programs passed.
"""

import pytest
from fuzz import check, generate, z_threshold

PROGRAMS = 100
Z = z_threshold(PROGRAMS * 50)  # Bonferroni over programs and coordinates


@pytest.mark.parametrize("seed", range(PROGRAMS))
def test_random_program_matches_exact_answers(seed):
    program = generate(seed)
    problems = check(program, n=20_000, z=Z, hessian=seed % 3 == 0)
    assert not problems, f"{program}\n" + "\n".join(problems)


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
