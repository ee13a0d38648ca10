"""``hil diff``'s comparison, done faster (issue 16), against its general definition on random
inputs (seeded ``random``): the deviations are narrowed once per pair of runs to those that can
apply, and ``_differs`` tries the commonest kinds first. Both must give what the one-step
definitions give, for every input."""

from __future__ import annotations

import random

import pytest

from hil.diff import Deviation, DiffReport, _differs, compare
from hil.journal import (
    DeviceObs,
    ErrorObs,
    InObs,
    IrqObs,
    Observation,
    ReadObs,
    ResidueObs,
    RunResult,
    WaitIrqObs,
    WaitTcObs,
)

TAGS = ["sim", "qemu", "intel", "sim:intel", "sim:qemu", "agent+tcp", "vm", "board"]
SCRIPTS = ["floppy-read", "cascade-gating", "sb16-autoinit", "bench"]
GLOBS = ["*", "?", "1*", "[0-9]", "*[2]*", "3", "floppy-*", "*-gating", "bench", "[!f]*"]
OPS = ["in", "read", "residue", "wait_tc", "device", "irq", "wait_irq"]
STEPS = ["1", "2", "3", "10", "5[2].1", "12[0]", "7"]


def random_deviation(rng: random.Random, i: int, pair: tuple[set[str], set[str]] | None = None) -> Deviation:
    """A random deviation; given the ``pair`` of runs' tags, one that names them half of the time."""
    if pair is not None and rng.random() < 0.5:
        between = (rng.choice(sorted(pair[0])), rng.choice(sorted(pair[1])))[::rng.choice([1, -1])]
        return Deviation(f"d{i}", between, "why", script=rng.choice(["*", "*", "*-*", *SCRIPTS]),
                         step=rng.choice(["*", "*", "*", "*", *STEPS]), op=rng.choice(["*", "*", "*", "*", *OPS]),
                         port=rng.choice([None, None, None, 0x08]), diff_mask=rng.choice([None, None, 0xF0]))
    return Deviation(f"d{i}", (rng.choice(TAGS), rng.choice(TAGS)), "why", script=rng.choice(SCRIPTS + GLOBS),
                     step=rng.choice(STEPS + GLOBS), op=rng.choice([*OPS, "*", "w*", "re*"]),
                     port=rng.choice([None, None, 0x08, 0x0F, 0x81]), diff_mask=rng.choice([None, 0xF0, 0x0F]))


def random_observation(rng: random.Random, step: str) -> Observation:
    """One observation of a random kind; values drawn from few choices, so pairs often agree."""
    common = {"step": step, "diff_mask": rng.choice([None, None, 0xFF, 0x0F]), "may_differ": rng.random() < 0.1}

    def small() -> int | None:
        return rng.choice([None, 0, 1, 0x12, 0x1234])

    def flag() -> bool | None:
        return rng.choice([None, True, False])

    def digest() -> str | None:
        return rng.choice([None, "sha256:aa", "sha256:bb"])

    kinds = [
        lambda: InObs(**common, port=rng.choice([0x08, 0x0F, 0x81]), width=8, value=small()),
        lambda: ReadObs(**common, addr=0x1000, length=16, digest=digest()),
        lambda: ResidueObs(**common, channel=2, value=small()),
        lambda: WaitTcObs(**common, channel=2, length=512, value=small(), tc=flag()),
        lambda: DeviceObs(**common, channel=2, length=small(), value=small(), tc=flag(), digest=digest()),
        lambda: IrqObs(**common, irq=6, level=flag(), count=small()),
        lambda: WaitIrqObs(**common, irq=6, level=flag(), count=small(), reached=flag()),
        lambda: ErrorObs(**common, failed_op=rng.choice(OPS), message=rng.choice(["", "timeout"])),
    ]
    return rng.choice(kinds)()


def random_like(rng: random.Random, obs: Observation) -> Observation:
    """Another backend's observation of the same step: mostly of the same kind."""
    other = random_observation(rng, obs.step)
    if rng.random() < 0.8:
        while type(other) is not type(obs):
            other = random_observation(rng, obs.step)
    return other


def differs_by_definition(a: Observation, b: Observation, mask: int) -> bool:
    """What ``_differs`` means, kind by kind (the fields each kind is compared on)."""
    if bool(a.error) != bool(b.error):
        return True
    if a.error:
        return False
    compared = {ReadObs: ("digest",), DeviceObs: ("digest", "length", "value", "tc"), WaitTcObs: ("tc", "value"),
                WaitIrqObs: ("reached", "level", "count"), IrqObs: ("level", "count")}
    values = (InObs, ResidueObs)
    if isinstance(a, values) and isinstance(b, values):
        va, vb = a.value, b.value
        if isinstance(va, int) and isinstance(vb, int):
            return (va & mask) != (vb & mask)
        return va != vb
    for kind, keys in compared.items():  # WaitIrqObs before its base IrqObs
        if isinstance(a, kind) and isinstance(b, kind):
            return any(getattr(a, k) != getattr(b, k) for k in keys)
    return a != b


@pytest.mark.parametrize("seed", range(8))
def test_narrowed_deviations_pick_the_same_one(seed: int) -> None:
    """The first deviation that ``matches`` an observation is the first of those that
    ``applies`` to the pair of runs that ``covers`` it."""
    rng = random.Random(seed)
    found = 0
    for _ in range(300):
        tags_a, tags_b = set(rng.sample(TAGS, 3)), set(rng.sample(TAGS, 3))
        devs = [random_deviation(rng, i, (tags_a, tags_b)) for i in range(rng.randrange(0, 12))]
        script = rng.choice(SCRIPTS)
        candidates = [d for d in devs if d.applies(script, tags_a, tags_b)]
        for _ in range(20):
            obs = random_observation(rng, rng.choice(STEPS))
            general = next((d for d in devs if d.matches(script, obs, tags_a, tags_b)), None)
            assert next((d for d in candidates if d.covers(obs)), None) is general
            found += general is not None
    assert found > 100  # observations a deviation matched, not only None is None


@pytest.mark.parametrize("seed", range(8))
def test_differs_is_its_definition(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(3000):
        a = random_observation(rng, "1")
        b = random_like(rng, a)
        mask = rng.choice([0xFFFF, 0xFF, 0x0F, 0xF0])
        assert _differs(a, b, mask) == differs_by_definition(a, b, mask), (a, b, mask)


@pytest.mark.parametrize("seed", range(4))
def test_compare_reports_what_the_general_matching_reports(seed: int) -> None:
    """A whole comparison: each divergence tolerated (or not) by the deviation the one-step
    ``matches`` picks, on random runs of random observations."""
    rng = random.Random(2000 + seed)
    tolerated = 0
    for _ in range(100):
        steps = rng.sample(STEPS, 5)
        script = rng.choice(SCRIPTS)
        ref = RunResult(script, f"{script}.toml", "sim", status="passed",
                        observations=[random_observation(rng, s) for s in steps])
        other = RunResult(script, f"{script}.toml", "sim:?profile=qemu", status="passed",
                          observations=[random_like(rng, o) for o in ref.observations])
        devs = [random_deviation(rng, i, (ref.tags, other.tags)) for i in range(rng.randrange(0, 10))]
        report = compare([ref, other], devs, DiffReport(backends=[ref.backend, other.backend]))
        by_step = {d.step: d for d in report.divergences}
        tags_a, tags_b = ref.tags, other.tags
        for a, b in zip(ref.observations, other.observations):
            o = a if not a.error else b
            dev = next((d for d in devs if d.matches(script, o, tags_a, tags_b)), None)
            mask = o.diff_mask if o.diff_mask is not None else 0xFFFF
            if dev is not None and dev.diff_mask is not None:
                mask &= dev.diff_mask
            if a.op != b.op:  # different kinds at one step: two keys, each observed on one side only
                continue
            found = by_step.get(a.step)
            assert (found is not None) == differs_by_definition(a, b, mask), (a, b, dev)
            if found is not None and not o.may_differ:
                expected = None if dev is None or dev.diff_mask is not None else f"known deviation {dev.name}: why"
                assert found.tolerated == expected
                tolerated += expected is not None
    assert tolerated > 10  # the deviations were exercised, not only the runs' differences
