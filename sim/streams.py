"""Stream helpers for Amaranth async testbenches, with seeded random valid/ready stalls.

Sample counts and seeds come from the environment (``SPIKELLM_SEED``,
``SPIKELLM_SAMPLES``) so a long randomised run needs no code change.
"""

from __future__ import annotations

import os
import random


def seed() -> int:
    """Seed of the randomised tests (env ``SPIKELLM_SEED``, default 1)."""
    return int(os.environ.get("SPIKELLM_SEED", "1"))


def samples(default: int) -> int:
    """Number of random cases (env ``SPIKELLM_SAMPLES`` overrides ``default``)."""
    return int(os.environ.get("SPIKELLM_SAMPLES", str(default)))


class Stalls:
    """Decides, per cycle, whether a driver or a sink holds back (probability ``p``)."""

    def __init__(self, p: float, rng: random.Random):
        self.p, self.rng = p, rng

    def __call__(self) -> bool:
        return self.p > 0 and self.rng.random() < self.p


async def put(ctx, stream, payload, stall: Stalls | None = None) -> None:
    """Drive one transfer on ``stream`` (optionally idling first, as a stalling source)."""
    while stall is not None and stall():
        await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def get(ctx, stream, stall: Stalls | None = None):
    """Take one transfer from ``stream``, deasserting ready on stalled cycles."""
    while True:
        ready = not (stall is not None and stall())
        ctx.set(stream.ready, int(ready))
        _clk, _rst, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            ctx.set(stream.ready, 0)
            return payload


async def take_rows(ctx, port, n_rows: int, lanes: int, depth: int, stall: Stalls | None,
                    out: list) -> None:
    """Read ``n_rows`` finished rows lane by lane from a :func:`hw.rings.rows_signature`
    port of ``depth`` slots into ``out`` (lists of ``lanes`` ints), releasing each; a
    stalled cycle reads nothing. Counts commits itself, as the combiner does."""
    ready = slot = 0
    while len(out) < n_rows:
        release = bool(ready) and not (stall is not None and stall())
        if release:
            ctx.set(port.slot, slot)
            row = []
            for j in range(lanes):
                ctx.set(port.lane, j)
                row.append(ctx.get(port.data))
            out.append(row)
            slot, ready = (slot + 1) % depth, ready - 1
        ctx.set(port.release, int(release))
        ready += ctx.get(port.commit)
        await ctx.tick()
    ctx.set(port.release, 0)


async def ring_rows(ctx, stream, release, n_rows: int, depth: int, stall: Stalls | None,
                    out: list) -> None:
    """Be the ring of ``depth`` finished rows behind a block that counts the ring's room
    itself (``hw.arrays.SpikeArray``): take every row ``stream`` offers, failing if one
    comes while ``depth`` rows are held, and release the oldest (``release``, room from the
    next cycle) on cycles not stalled, until ``n_rows`` rows are out (lists of ints)."""
    held: list = []
    ctx.set(stream.ready, 1)
    while len(out) < n_rows:
        free = bool(held) and not (stall is not None and stall())
        ctx.set(release, int(free))
        _clk, _rst, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid:
            assert len(held) < depth, f"a row offered while the ring holds {depth}"
        if free:
            out.append(held.pop(0))
        if valid:
            held.append([int(payload[j]) for j in range(len(payload))])
    ctx.set(release, 0)


def stream_rules(streams: dict, failures: list | None = None):
    """A background testbench checking ``lib.stream`` rules on the block's output
    ``streams`` (name -> stream): once ``valid`` is offered without ``ready``, the next
    cycle must still offer it with the same payload. A broken rule raises (or is appended
    to ``failures`` when given), naming the stream and the cycle."""
    from amaranth import Value

    sigs = []
    for s in streams.values():
        sigs += [s.valid, s.ready, Value.cast(s.payload)]

    async def monitor(ctx):
        held = dict.fromkeys(streams)  # payload offered but not yet taken
        cycle = 0
        async for _clk, _rst, *v in ctx.tick().sample(*sigs):
            cycle += 1
            for i, name in enumerate(streams):
                valid, ready, payload = v[3 * i:3 * i + 3]
                if held[name] is not None and not (valid and payload == held[name]):
                    msg = f"{name}: valid dropped or payload changed before ready (cycle {cycle})"
                    if failures is None:
                        raise AssertionError(msg)
                    failures.append(msg)
                held[name] = payload if valid and not ready else None

    return monitor
