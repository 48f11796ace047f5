"""The host driver: framed requests with CRC, bounded retries and resynchronisation, and the
operations a model run needs (identify, write and read buffers, run descriptors, counters).

Every frame is CRC-checked both ways (the gateware checks requests, :class:`FrameDecoder`
checks responses). A request is retransmitted, with the same ``seq`` and exponential
backoff, after a timeout, a damaged or missing response, or a link error reply (``ERR_CRC``,
``ERR_LENGTH``, ``ERR_TIMEOUT``); responses with another ``seq`` (late answers to an earlier
attempt, duplicates) are discarded. Retransmission is safe for every command: all but RUN
are idempotent and the gateware answers a repeated RUN without running it again
(``docs/link.md``). After ``retries`` attempts the driver raises :class:`LinkError`; a
refusal by the core (``ERR_ARG``, ``ERR_COMMAND``) raises :class:`DeviceError` at once.
Nothing is ever returned that did not arrive in a frame with a good CRC and the right seq.

A GEMM's requests go out pipelined (``accel.requests.pipeline_groups``): the requests of a
group are sent together and their answers awaited together, one round trip's latency for
the group. If an answer in a group is missing or damaged, that request is retransmitted
with its seq (so a RUN whose answer was lost is not run again) and the rest of the group
is sent again one request at a time: a group holds only requests for which that is right.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter

import torch
from amaranth import signed

from accel.chain import Chain
from accel.config import AccelConfig
from accel.layouts import BufId, unpack_int
from accel.payloads import parse_counters, parse_ident, parse_words, run_payload
from accel.protocol import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    READ_ONLY,
    RUNS_ONCE,
    RX_FIFO_BYTES,
    Cmd,
    Frame,
    FrameDecoder,
    Status,
    encode_frame,
    word_bytes,
)
from accel.requests import (
    READ_CHUNK,
    BufferMirror,
    Request,
    chained,
    gemm_requests,
    pipeline_groups,
    read_requests,
    tile_requests,
    write_requests,
)
from accel.resident import DramImage
from accel.tiling import TileImage
from models.contract import low_bits

from .transport import Transport

#: Link error replies worth a retransmission (the request was damaged on the way).
TRANSIENT = {Status.ERR_CRC.value, Status.ERR_LENGTH.value, Status.ERR_TIMEOUT.value}


class LinkError(RuntimeError):
    """No good answer after every retry."""


class DeviceError(RuntimeError):
    """The device refused a request (bad argument or unknown command)."""


class Device:
    """One accelerator behind a transport.

    Parameters: ``cfg`` is the bundle's configuration (:meth:`identify` checks the device
    has the same hash); ``timeout`` / ``run_timeout`` bound the wait for an answer (RUN
    answers when its tile is done); ``retries`` bounds retransmissions; ``verify_weights``
    reads every weight write back and compares; ``window``: the bytes of requests sent
    ahead of an answer (the board's receive FIFO; 0: each request waits for the answer
    before it).
    """

    def __init__(self, transport: Transport, cfg: AccelConfig, *, timeout: float = 2.0,
                 run_timeout: float = 20.0, retries: int = 8, backoff: float = 0.005,
                 verify_weights: bool = False, max_payload: int = MAX_PAYLOAD,
                 read_chunk: int = READ_CHUNK, quiet: float = 0.3,
                 window: int = RX_FIFO_BYTES):
        self.t, self.cfg = transport, cfg
        self.timeout, self.run_timeout = timeout, run_timeout
        self.retries, self.backoff = retries, backoff
        self.verify_weights = verify_weights
        self.max_payload = max_payload
        #: bytes per READ_BUF answer: short answers are cheaper to retry on a noisy link
        self.read_chunk = min(read_chunk, max_payload)
        #: seconds of silence after a timeout, longer than the device's link timeout, so
        #: that a request cut short (or a false SOF in noise) is dropped by the device
        #: before the retransmission; otherwise the retry's bytes would complete it
        self.quiet = quiet
        self.decoder = FrameDecoder(max_payload)
        self.window = window
        self.seq = 0
        #: seqs of a pipelined group still to be answered, and answers (or "bad frame")
        #: that came for them while the driver waited for an earlier one
        self._pending: set[int] = set()
        self._early: dict[int, Frame | str] = {}
        self._last_run: int | None = None  #: seq of the RUN the core may still hold
        self.stats: Counter = Counter()
        #: what each address of the host-written buffers holds, as far as this driver knows
        self.mirror = BufferMirror(cfg)
        #: the model image the external memory holds (``accel.resident``), once
        #: :meth:`load_image` or :meth:`use_image` has checked it: tile writes it holds
        #: become LOADs
        self.image: DramImage | None = None

    # -- framing ---------------------------------------------------------------------------
    def request(self, cmd: Cmd, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Send one request and return the payload of its OK answer (see module doc)."""
        self.stats["waits"] += 1
        return self._transact(cmd, payload, self._next_seq(cmd), timeout or self._wait(cmd))

    def _next_seq(self, cmd: Cmd | None = None) -> int:
        """A fresh seq for ``cmd``; never, for a new RUN, the seq of the last RUN the
        core may still hold (it keeps it across reads: it would answer without running)."""
        self.seq = (self.seq + 1) & 0xFF
        if cmd in RUNS_ONCE:  # the core keeps an EXPAND's and a CHAIN's too
            if self.seq == self._last_run:
                self.seq = (self.seq + 1) & 0xFF
            self._last_run = self.seq
        elif cmd not in READ_ONLY:
            self._last_run = None  # any other command makes the core forget it
        return self.seq

    def _wait(self, cmd: Cmd) -> float:
        """How long an answer to ``cmd`` may take (a RUN answers when its tile is done)."""
        return self.run_timeout if cmd in (Cmd.RUN, Cmd.LOAD_RUN, Cmd.CHAIN) else self.timeout

    def _put(self, frame: bytes) -> None:
        self.t.send(frame)
        self.stats["frames_tx"] += 1
        self.stats["bytes_tx"] += len(frame)

    def _transact(self, cmd: Cmd, payload: bytes, seq: int, wait: float,
                  got: Frame | str | None = None) -> bytes:
        """Send a request as ``seq`` until an OK answer comes (retransmitting after a link
        error, with backoff); its payload. ``got``: the outcome of a first attempt already
        sent (in a pipelined group), not an OK answer."""
        frame = encode_frame(cmd.value, seq, payload)
        why: list[str] = []
        for attempt in range(self.retries + 1):
            if got is None:
                if attempt:
                    self.stats["retries"] += 1
                    pause = min(0.5, self.backoff * 2 ** (attempt - 1))
                    time.sleep(max(pause, self.quiet) if why[-1] == "timeout" else pause)
                self._put(frame)
                got = self._answer(seq, wait)
            if isinstance(got, Frame):
                if got.cmd == Status.OK.value:
                    return got.payload
                if got.cmd not in TRANSIENT:
                    name = Status(got.cmd).name if got.cmd in {s.value for s in Status} \
                        else hex(got.cmd)
                    raise DeviceError(f"{cmd.name} (seq {seq}) refused: {name}")
                why.append(Status(got.cmd).name)
            else:
                why.append(got)
            got = None
        raise LinkError(f"{cmd.name} (seq {seq}): no good answer after "
                        f"{self.retries + 1} attempts ({', '.join(why)})")

    def exchange(self, group: list[Request]) -> list[bytes]:
        """Send a pipelined group of requests (``accel.requests.pipeline_groups``) and
        return their OK answers' payloads, in order (see module doc)."""
        if len(group) == 1:
            return [self.request(group[0].cmd, group[0].payload)]
        self.stats["waits"] += 1
        seqs = [self._next_seq(r.cmd) for r in group]
        for req, seq in zip(group, seqs, strict=True):
            self._put(encode_frame(req.cmd.value, seq, req.payload))
        self._pending = set(seqs[1:])
        out: list[bytes] = []
        try:
            for i, (req, seq) in enumerate(zip(group, seqs, strict=True)):
                self._pending.discard(seq)
                got = self._early.pop(seq, None) or self._answer(seq, self._wait(req.cmd))
                if isinstance(got, Frame) and got.cmd == Status.OK.value:
                    out.append(got.payload)
                    continue
                # this one again with its own seq, then the rest one at a time: they may
                # have run on what this one left undone
                self._pending.clear()
                self._early.clear()
                out.append(self._transact(req.cmd, req.payload, seq, self._wait(req.cmd), got))
                out += [self.request(r.cmd, r.payload) for r in group[i + 1:]]
                break
        finally:
            self._pending.clear()
            self._early.clear()
        return out

    def _answer(self, seq: int, wait: float) -> Frame | str:
        """The response to ``seq``, or why there is none ("timeout", "bad frame")."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stats["timeouts"] += 1
                items, timed_out = self.decoder.flush(), True
            else:
                data = self.t.recv(min(left, 0.05))
                if not data:
                    continue
                self.stats["bytes_rx"] += len(data)
                items, timed_out = self.decoder.feed(data), False
            damaged, found = False, None
            for item in items:  # every one: answers to later requests of a group may follow
                if not isinstance(item, Frame):
                    self.stats["bad_frames"] += 1
                    damaged |= item.seq == seq
                    if item.seq in self._pending:  # a later request of the group
                        self._early.setdefault(item.seq, "bad frame")
                elif found is None and (item.seq == seq
                                        or (item.seq == 0 and item.cmd in TRANSIENT)):
                    found = item
                elif item.seq in self._pending:
                    self._early[item.seq] = item  # answered while an earlier one is awaited
                else:
                    self.stats["stale_frames"] += 1
            if found is not None:
                return found  # a good answer wins over a damaged copy beside it
            if damaged:
                return "bad frame"
            if timed_out:
                return "timeout"

    # -- operations ------------------------------------------------------------------------
    def identify(self) -> dict:
        """The device's identity; refuses a device built from another configuration.
        Forgets what the buffers were known to hold (the device may have been reloaded)."""
        self.forget()
        ident = parse_ident(self.request(Cmd.IDENTIFY))
        if ident["hash"] != self.cfg.hash32():
            raise DeviceError(
                f"device config hash {ident['hash']:#010x} differs from the bundle's "
                f"{self.cfg.hash_text} (lanes {ident['lanes']} vs {self.cfg.lanes}, "
                f"MAC units {ident['mac_units']} vs {self.cfg.mac_units}): program the "
                f"device with this bundle's design")
        if ident["version"] != PROTOCOL_VERSION:
            raise DeviceError(
                f"device speaks link protocol {ident['version']}, this host "
                f"{PROTOCOL_VERSION}: program the device with a design built by this version")
        return ident

    def forget(self) -> None:
        """Forget what the buffers hold: the next writes all go to the device."""
        self.mirror.forget()

    def write(self, buf: BufId, words: list, addr: int = 0) -> None:
        """Write words into a buffer (split into frames)."""
        for req in write_requests(self.cfg, self.mirror, buf, words, addr, self.max_payload):
            self._write(req)

    def _write(self, req: Request) -> int:
        """Send one WRITE_BUF or LOAD request; the buffer writes it completed (then
        checked by reading them back, for weights when ``verify_weights``)."""
        self.request(req.cmd, req.payload)
        return self._verify(req)

    def _verify(self, req: Request) -> int:
        """Read back the weights ``req`` completed when ``verify_weights``; their number."""
        for buf, addr, words in req.completes:
            if self.verify_weights and buf in (BufId.WEIGHTS, BufId.WEIGHTS4):
                if self.weight_rows(addr, len(words), narrow=buf == BufId.WEIGHTS4) != [
                        [int(v) for v in row] for row in words]:
                    raise LinkError(f"{buf.name} read back at {addr}..{addr + len(words)} "
                                    f"differs from what was written")
        return len(req.completes)

    def weight_rows(self, addr: int, count: int, narrow: bool = False) -> list[list[int]]:
        """Weight rows read back as lists of lane weights (``narrow``: what their narrow
        halves hold, the view ``BufId.WEIGHTS4`` writes)."""
        wb, cfg = self.cfg.weight_bits, self.cfg
        rows = []
        for bits in self.read(BufId.WEIGHTS, addr, count):
            lanes = [unpack_int(signed(wb), bits >> (j * wb)) for j in range(cfg.lanes)]
            rows.append([low_bits(v, cfg.narrow_bits) for v in lanes] if narrow else lanes)
        return rows

    def read_raw(self, buf: BufId, addr: int, count: int) -> bytes:
        """Raw bytes of ``count`` words (split into frames)."""
        return b"".join(self.request(r.cmd, r.payload)
                        for r in read_requests(self.cfg, buf, addr, count, self.read_chunk))

    def read(self, buf: BufId, addr: int, count: int) -> list[int]:
        """Integer words of a buffer."""
        return parse_words(self.cfg, buf, self.read_raw(buf, addr, count))

    def counters(self) -> dict[str, int]:
        """Every event counter."""
        return parse_counters(self.cfg, self.request(Cmd.READ_COUNTERS))

    def reset_counters(self) -> None:
        """Zero every counter."""
        self.request(Cmd.RESET_COUNTERS)

    def abort(self) -> None:
        """Return the engine to idle (buffer contents are kept)."""
        self.request(Cmd.ABORT)

    def run(self, descriptor: dict, where: str = "RUN") -> None:
        """Run one descriptor (its buffers already written). A descriptor the core would
        refuse raises ``ValueError`` before anything is sent; a tile the engine stopped
        raises :class:`DeviceError` (``ERR_FAULT``); a RUN that never answers is followed by
        an ABORT, so that the engine is idle for whatever comes next, and raises
        :class:`LinkError`."""
        self._run(run_payload(self.cfg, descriptor, where), where)

    def _run(self, payload: bytes, where: str, cmd: Cmd = Cmd.RUN) -> None:
        self._running(where, lambda: self.request(cmd, payload))

    def _running(self, where: str, send):
        """``send()``, which sends a RUN of tile ``where``: a refusal names the tile; a
        RUN that never answers is followed by an ABORT, so that the engine is idle for
        whatever comes next."""
        try:
            return send()
        except DeviceError as e:
            raise DeviceError(f"{where}: {e}") from None
        except LinkError:
            try:
                self.abort()
            except (LinkError, DeviceError):
                pass  # the device is not answering at all: the RUN's error says so
            raise

    def run_tile(self, img: TileImage) -> None:
        """Write a tile's buffers (skipping words already resident, LOADs for the words the
        external memory holds) and run it (:func:`host.commands.tile_requests`)."""
        self._send(tile_requests(self.cfg, img, self.mirror, self.max_payload, self.image),
                   len(img.words))

    def gemm(self, plan, lead=None) -> torch.Tensor:
        """Run a planned GEMM (``accel.tiling.plan_gemm``) in its schedule; its outputs
        ``[M, N]`` (each slice read back after its last K tile has run): the requests
        of :func:`accel.requests.gemm_requests` (``lead``: the first weights of the GEMM
        that follows, ``accel.tiling.PassPlanner.lead``, loaded beside the last tile when
        the external memory holds them)."""
        return self.send_gemm(plan, self.gemm_requests(plan, lead))[0]

    def gemm_counted(self, plan, lead=None, image: DramImage | None = None,
                     chain: Chain | None = None) -> tuple[torch.Tensor, dict[str, int]]:
        """:meth:`gemm`, and the counters after it (their read pipelined behind the
        GEMM's last requests: no round trip of its own). ``image``: what the external
        memory holds for this GEMM, if more than the model (``accel.chain.PassChains``);
        ``chain``: its outputs STOREd there for later GEMMs, not read back but for the
        slices the chain reads (the outputs returned are zeros elsewhere)."""
        out, counters = self.send_gemm(
            plan, self.gemm_requests(plan, lead, image, chain, counted=True))
        assert counters is not None
        return out, counters

    def gemm_requests(self, plan, lead=None, image: DramImage | None = None,
                      chain: Chain | None = None, counted: bool = False) -> list[Request]:
        """The requests :meth:`gemm` (``counted``: :meth:`gemm_counted`) sends for
        ``plan``, built on this device's buffer mirror, which then assumes them sent: pass
        them to :meth:`send_gemm` next, or :meth:`forget`. ``lead``, ``image`` and
        ``chain`` count only where the device has an external memory image
        (:meth:`load_image`; :meth:`chain_in_force`)."""
        image = image if self.image is not None and image is not None else self.image
        return [*gemm_requests(self.cfg, plan, self.mirror, self.max_payload, self.read_chunk,
                               image, lead if self.image is not None else None,
                               self.chain_in_force(chain)),
                *([Request(Cmd.READ_COUNTERS, b"")] if counted else [])]

    def chain_in_force(self, chain: Chain | None) -> Chain | None:
        """``chain`` where the device holds an external memory image to STORE into (as
        :meth:`gemm_requests` sends it), else None: every output is read back."""
        return chain if self.image is not None else None

    def send_gemm(self, plan, requests: list[Request]) -> tuple[torch.Tensor, dict | None]:
        """Send ``requests`` (:meth:`gemm_requests` of ``plan``); the outputs ``[M, N]``
        and the counters, where the requests read them."""
        m = max(s.r1 for s in plan.slices)
        n = max(s.n1 for s in plan.slices)
        out = torch.zeros(m, n, dtype=torch.int64)
        got = self._send(requests, sum(len(img.words) for img, _ in plan.steps()))
        counters = got.pop(Cmd.READ_COUNTERS, None)
        for (r0, r1, n0, n1), words in got.items():
            out[r0:r1, n0:n1] = torch.tensor(words).view(r1 - r0, n1 - n0)
        return out, counters

    def _send(self, requests, blocks: int) -> dict:
        """Send sans-IO requests in pipelined groups (:meth:`exchange`); the words each
        output slice read back (``Request.reads``), by ``(r0, r1, n0, n1)``, and the
        counters under ``Cmd.READ_COUNTERS`` if read. ``blocks``: the buffer writes the
        tiles need, of which those not sent count as skipped (already resident)."""
        try:
            return self._send_all(requests, blocks)
        except (DeviceError, LinkError):
            # the requests are built ahead of their answers (chained, pipelined), so the
            # mirror may already hold words a refused or lost request never wrote
            self.forget()
            raise

    def _send_all(self, requests, blocks: int) -> dict:
        got: dict = {}
        for group in pipeline_groups(chained(requests, self.max_payload), self.window):
            head = group[0]
            if any(r.cmd in (Cmd.RUN, Cmd.LOAD_RUN) for r in head.parts or (head,)):
                answers = self._running(head.where, lambda g=group: self.exchange(g))
            else:
                answers = self.exchange(group)
            for req, answer in zip(group, answers, strict=True):
                if req.reads is not None:
                    done, buf = req.reads
                    got.setdefault(tuple(done[:4]), []).extend(
                        parse_words(self.cfg, buf, answer))
                elif req.cmd == Cmd.READ_COUNTERS:
                    got[Cmd.READ_COUNTERS] = parse_counters(self.cfg, answer)
                else:  # writes and copies (a LOAD_RUN's, a CHAIN's): weights read back if asked
                    for part in req.parts or (req,):
                        done = self._verify(part)
                        blocks -= done
                        # every copy, the code buffer's too (its LOADs complete no tile write)
                        self.stats["loads"] += (part.payload[0] if part.cmd in (
                            Cmd.LOAD, Cmd.LOAD_RUN) else 0)
        self.stats["writes_skipped"] += blocks
        return got

    def load_image(self, image: DramImage, verify: bool = True, progress=None) -> None:
        """Write a model image (``accel.resident``) into the external memory: its header
        cleared first, then its words, read back and compared by CRC-32 when ``verify``,
        then its header, so that a load cut short is never taken for a whole one. Runs
        use it from then on. ``progress(words)`` is called as words are written."""
        self.image = None
        self.write(BufId.DRAM, [0] * image.base)
        chunk = 1 << 14
        for a in range(0, len(image.words), chunk):
            self.write(BufId.DRAM, image.words[a:a + chunk], image.base + a)
            if progress:
                progress(len(image.words[a:a + chunk]))
        if verify:
            nb = word_bytes(self.cfg)[BufId.DRAM]
            want = zlib.crc32(b"".join(w.to_bytes(nb, "little") for w in image.words))
            got = zlib.crc32(self.read_raw(BufId.DRAM, image.base, len(image.words)))
            if got != want:
                raise LinkError(f"the external memory read back with CRC-32 {got:08x}, "
                                f"not the image's {want:08x}")
        self.write(BufId.DRAM, image.header())
        self.image = image

    def use_image(self, image: DramImage) -> bool:
        """Use ``image`` for the runs that follow if the device's external memory holds it
        (its header, written last by :meth:`load_image`, equals the image's); whether it
        does."""
        held = self.read(BufId.DRAM, 0, image.base)
        self.image = image if held == image.header() else None
        return self.image is not None

    def link_bytes(self) -> int:
        """Bytes sent and received so far (frames included)."""
        return self.stats["bytes_tx"] + self.stats["bytes_rx"]


