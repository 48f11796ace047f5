"""The executor's interlock between a LOAD and the RUN after it, at its tightest cycle, on
the simulated device: a RUN waits for the copy in flight and starts the cycle after the
copier's last write is presented, so the first word its event reader reads can be the very
word that copy wrote last. That word must be the new one, not the buffer's old one (the
engine registers host writes once, and a block RAM read in the cycle of its write returns
the old word)."""

import pytest

from accel.counters import COUNTERS
from accel.layouts import BufId, SpikeOp, buffer_shapes, dram_words, to_dram_words, word_packer
from accel.payloads import load_payload, run_payload
from accel.protocol import Cmd
from accel.tiling import out_read, plan_call
from host.driver import Device
from host.transport import SerialTransport

from .conftest import CFG, FAST
from .test_resident import _call

#: where the copies' words start in the memory
SRC = 4000
#: the counters of the engine's work (not of the link, the copies or the clock): those
#: counting engine strobes only, and the descriptors run
DATAPATH = (*(n for n, c in COUNTERS.items() if all(s.startswith("engine.") for s in c.sources)),
            "descriptors")


def _one_tile(seed: int):
    (img, _), = plan_call(CFG, _call(seed, m=5, k=20, n=CFG.lanes)).steps()
    return img


@pytest.mark.parametrize("buf", [BufId.SPIKE_EV, BufId.MAC_EV])
def test_a_run_reads_the_word_the_load_before_it_wrote_last(sim, buf):
    img = _one_tile(3)
    pack = word_packer(buffer_shapes(CFG)[buf][0])
    new_words = img.words[buf]
    # the buffer's old first word: a spike or MAC event of the first row (as the new first
    # word's), so that reading it changes that row's result and nothing else
    first = new_words[0]
    old = {**first, "op": SpikeOp.SPIKE, "k": 1} if buf == BufId.SPIKE_EV else {
        **first, "q": first["q"] - 100 if first["q"] > 0 else first["q"] + 100}
    t = SerialTransport(sim.url)
    dev = Device(t, CFG, **FAST)
    dev.identify()
    for b, words in img.words.items():
        if b != buf:
            dev.write(b, words, img.base.get(b, 0))

    def run(copies, words, descriptor):
        """Write ``words`` (the buffer's old contents), then one LOAD_RUN: ``copies``, then
        the RUN; what it computed (raw OUT bytes) and counted."""
        dev.write(buf, words, descriptor[base_key])
        dev.reset_counters()
        dev.request(Cmd.LOAD_RUN, load_payload(*copies) + run_payload(CFG, descriptor))
        rb, addr, count = out_read(CFG, img)
        return dev.read_raw(rb, addr, count), dev.counters()

    base_key = "spike_base" if buf == BufId.SPIKE_EV else "mac_base"
    # reference: the tile's events loaded in one copy that ends long before the RUN needs it
    n = dram_words(CFG, buf)
    dev.write(BufId.DRAM, to_dram_words(CFG, buf, [pack(w) for w in new_words]), SRC)
    want, want_ctr = run([(buf, img.base.get(buf, 0), len(new_words), SRC)], new_words,
                         img.descriptor)
    assert want_ctr["faults"] == 0
    # the same with the block's first word old (the copy writes a word past the block)
    base = img.base.get(buf, 0)
    stale, _ = run([(buf, base + len(new_words), 1, SRC)], [old, *new_words[1:]],
                   img.descriptor)
    assert stale != want  # the test can tell the old first word from the new one
    for filler in (8, 40, 97):
        # the block moved up by ``filler`` words; one copy writes its words 1.., then a
        # long one writes ``filler`` words of junk below it and, last, its first word: the
        # RUN waits for that copy (load_wait) and its reader's first word is that last one
        at = filler
        desc = {**img.descriptor, base_key: at}
        junk = to_dram_words(CFG, buf, [pack(old)] * filler)
        dev.write(BufId.DRAM, junk + to_dram_words(CFG, buf, [pack(w) for w in new_words]), SRC)
        copies = [(buf, at + 1, len(new_words) - 1, SRC + (filler + 1) * n),
                  (buf, 0, filler + 1, SRC)]
        if len(new_words) == 1:
            copies = copies[1:]
        got, ctr = run(copies, [old] * len(new_words), desc)
        assert ctr["load_wait"] > 0, f"{filler}: the RUN did not wait for the copy"
        assert got == want, f"{buf.name}, {filler} words of filler: the old first word was read"
        assert {k: ctr[k] for k in DATAPATH} == {k: want_ctr[k] for k in DATAPATH}
    t.close()
