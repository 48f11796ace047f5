"""What requests cost the link: bytes both ways, frames and round trips, as the driver
sends them (chained, pipelined), and by what they carry; and the whole forward pass's cost
as ``host run`` sends it. Prices ``accel.requests``' requests without a device: the
generator's reports and the host's predictions (each GEMM's measured traffic is checked
against :func:`link_cost`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from .chain import PassChains
from .config import AccelConfig
from .encoder import encoder_counts
from .protocol import FRAME_OVERHEAD, MAX_PAYLOAD, RX_FIFO_BYTES, Cmd
from .requests import (
    WRITES,
    BufferMirror,
    Request,
    answer_bytes,
    chained,
    gemm_requests,
    named_buffer,
    pipeline_groups,
)
from .resident import DramImage
from .tiling import PassPlanner, batches


def carries(req: Request) -> str:
    """What a request's payload and answer carry, as :func:`link_cost`'s breakdown names
    it: ``write <buffer>`` / ``read <buffer>`` (the buffer or view a WRITE_BUF, WRITE_ROWS
    or READ_BUF names, so ``read out16`` says the width too; its arguments included), else
    the command (``run``, ``load_run``, ``expand``, ``read_counters``, ...)."""
    if req.cmd in WRITES or req.cmd == Cmd.READ_BUF:
        way = "read" if req.cmd == Cmd.READ_BUF else "write"
        return f"{way} {named_buffer(req).name.lower()}"
    return req.cmd.name.lower()


#: Key prefix of :func:`link_cost`'s breakdown: ``part:<label>:<what>``.
PART = "part:"


def link_cost(cfg: AccelConfig, requests: Iterator[Request] | list[Request],
              window: int = RX_FIFO_BYTES, max_payload: int | None = MAX_PAYLOAD,
              label: str | None = None) -> Counter:
    """What ``requests`` move over the link when every one is answered at the first try,
    sent as the driver sends them (:func:`chained` to ``max_payload``, None: each on its
    own frame): ``frames_tx`` (frames), ``bytes_tx`` and ``bytes_rx`` (frames included)
    and ``waits`` (round trips: :func:`pipeline_groups` with ``window``; as many as frames
    with ``window`` 0), the same keys the driver counts (``host.driver.Device.stats``).

    With ``label``, also those bytes by what they carry: ``part:<label>:<what>``
    (:func:`carries`; a CHAIN's requests each by their own) for the payloads both ways,
    and ``part:<label>:framing`` for the frames' overhead both ways and a CHAIN's
    sub-headers. The parts add up to ``bytes_tx + bytes_rx``."""
    cost: Counter = Counter()
    if max_payload is not None:
        requests = chained(requests, max_payload)
    for group in pipeline_groups(requests, window):
        cost["waits"] += 1
        for req in group:
            cost["frames_tx"] += 1
            cost["bytes_tx"] += len(req.payload) + FRAME_OVERHEAD
            cost["bytes_rx"] += answer_bytes(cfg, req) + FRAME_OVERHEAD
            if label is None:
                continue
            # a request alone is its own part; a CHAIN's sub-headers are framing
            parts = [(p, len(p.payload) + answer_bytes(cfg, p)) for p in req.parts or (req,)]
            cost[f"{PART}{label}:framing"] += (2 * FRAME_OVERHEAD + len(req.payload)
                                               + answer_bytes(cfg, req)
                                               - sum(b for _, b in parts))
            for p, b in parts:
                cost[f"{PART}{label}:{carries(p)}"] += b
    return cost


def link_parts(cost: Counter) -> dict[str, dict[str, int]]:
    """:func:`link_cost`'s breakdown in ``cost``, as ``{label: {what: bytes}}``."""
    out: dict[str, dict[str, int]] = {}
    for key, b in cost.items():
        if key.startswith(PART):
            label, what = key[len(PART):].split(":", 1)
            out.setdefault(label, {})[what] = b
    return out


def gemm_label(name: str) -> str:
    """A GEMM's name without its layer (``layers.3.up`` -> ``up``): the breakdown of
    :func:`run_link_costs` adds the layers of one kind together."""
    return name.rsplit(".", 1)[-1]



def run_link_cost(cfg: AccelConfig, calls: list, image: DramImage | None = None) -> Counter:
    """The link traffic of running a forward pass's traced GEMMs (``models.golden.GemmCall``)
    in order from a fresh device, as ``host run`` does: each GEMM (an attention node's heads
    together, :func:`accel.tiling.batches`) planned by one
    :class:`~accel.tiling.PassPlanner`, its :func:`gemm_requests` (with the next GEMM's
    lead weights when the model is in the external memory, ``image``, and the outputs that
    are later GEMMs' weights STOREd there, ``accel.chain.PassChains``), the buffers'
    contents carried from one GEMM to the next, and the counters read after each (the run
    checks every GEMM's counters, a node's heads' together). Besides :data:`LINK_KEYS`,
    ``enc_busy``: the cycles the spike encoder takes for the EXPANDs among them
    (``accel.encoder.encoder_counts``), and :func:`link_cost`'s breakdown, each GEMM
    labelled by :func:`gemm_label`."""
    return run_link_costs(cfg, calls, [image])[0]


def run_link_costs(cfg: AccelConfig, calls: list,
                   images: list[DramImage | None]) -> list[Counter]:
    """:func:`run_link_cost` for each of ``images`` (a device of its own each), every GEMM
    planned once for all of them (the plan does not depend on the image)."""
    mirrors = [BufferMirror(cfg) for _ in images]
    costs = [Counter[str]() for _ in images]
    # with the model in the external memory, outputs that are later weights are STOREd
    chains = [None if image is None else PassChains(cfg, calls, image) for image in images]
    planner = PassPlanner(cfg)
    for batch in batches(calls):
        i, last = batch[0], batch[-1]
        plan = planner.plan_batch([calls[j] for j in batch])
        lead = planner.lead(calls[last + 1] if last + 1 < len(calls) else None)
        for ch, mirror, cost in zip(chains, mirrors, costs, strict=True):
            reqs = [*gemm_requests(cfg, plan, mirror, image=None if ch is None else ch.image_for(i),
                                   lead=None if ch is None else lead,
                                   chain=None if ch is None else ch.by_call.get(i)),
                    Request(Cmd.READ_COUNTERS, b"")]
            cost += link_cost(cfg, reqs, label=gemm_label(calls[i].name))
            cost["enc_busy"] += encoder_counts(reqs)["enc_busy"]
    return costs
