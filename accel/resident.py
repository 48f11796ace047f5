"""The model resident in the accelerator's external memory: what `host load` writes there
and how a run finds it.

The image is content-addressed: it holds every distinct block of buffer words a linear
layer's tiles write (weight rows, requantizer constants, start values:
``accel.tiling.constant_tiles``), each laid out as a LOAD reads it
(``accel.layouts.to_dram_words``), and the requantizer constants and start values of the
attention GEMMs (QK^T, PV: their weights are activations, their constants are the
model's). At run time any tile write whose words are in the image, or are the first words
of a block there, becomes a LOAD from there (:meth:`DramImage.find`); everything else
(events, attention operands) still crosses the link. Nothing names a layer, so the image
needs no map of the program, and a block shared by several tiles is stored once.

An attention GEMM's output lanes are key tokens (QK^T) whose constants are one value per
head, so how many lanes a tile has depends on the sequence: such a block is stored
``lanes`` words wide and found by any tile that writes a prefix of it
(:meth:`DramImage.add` with ``prefixes``), whatever sequence the image was traced on.

Words ``0 .. HEADER_WORDS`` hold a header written last by `host load`: a magic word, the
image's length and its SHA-256. A run uses the external memory only when the device's
header equals the image the bundle gives (:meth:`DramImage.header`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch

from .config import AccelConfig
from .layouts import BufId, buffer_shapes, loadable, to_dram_words, word_packer
from .tiling import constant_tiles

#: Words at the start of the external memory that describe the image (32-bit fields).
HEADER_WORDS = 16
#: First header word: "SLLM".
MAGIC = 0x4D4C4C53


class DramImage:
    """The external memory's contents for one model: buffer-word blocks, each stored once
    (``find`` gives its first memory word), after a :data:`HEADER_WORDS` header."""

    def __init__(self, cfg: AccelConfig, after: DramImage | None = None):
        self.cfg = cfg
        #: where the words start: after the header, or after ``after``'s words
        self.base: int = (-(-HEADER_WORDS * 32 // cfg.dram_bits) if after is None
                          else after.base + len(after.words))
        self.parent = after
        self._loadable = loadable(cfg)
        self.words: list[int] = []  #: memory words from ``base`` on
        self._index: dict[tuple[BufId, bytes], int] = {}  #: blocks and their prefixes
        self._blocks = 0

    def key(self, buf: BufId, words: list) -> tuple[BufId, bytes]:
        """What identifies a block: its buffer and the SHA-256 of its words as the tiling
        builds them (integers, rows of integers, or dicts of integer fields; the same
        words are always built alike), not packed: packing every block of a run to look
        it up cost more than the run's planning."""
        try:
            raw = np.asarray(words, dtype=np.int64)
            blob = repr(raw.shape).encode() + raw.tobytes()
        except (TypeError, ValueError):  # dict words (events, constants)
            blob = repr(words).encode()
        return buf, hashlib.sha256(blob).digest()

    def add(self, buf: BufId, words: list, prefixes: bool = False) -> int:
        """Store ``words`` of ``buf`` (once); their first memory word. ``prefixes``: a
        tile that writes only the first words of the block finds it too (a buffer word
        is a whole number of memory words, so a LOAD of ``j`` words from the block's
        start copies exactly its first ``j``)."""
        if buf not in self._loadable:
            raise ValueError(f"{buf.name} words cannot be loaded from the external memory")
        key = self.key(buf, words)
        if key not in self._index:
            pack = word_packer(buffer_shapes(self.cfg)[buf][0])
            self._index[key] = self.base + len(self.words)
            self._blocks += 1
            self.words += to_dram_words(self.cfg, buf, [pack(w) for w in words])
            if self.base + len(self.words) > 1 << self.cfg.dram_addr_bits:
                raise ValueError(f"the model's image needs {self.base + len(self.words):,} "
                                 f"memory words, more than the {1 << self.cfg.dram_addr_bits:,}"
                                 f" of the external memory (dram_addr_bits)")
        at = self._index[key]
        for j in range(1, len(words) if prefixes else 0):
            self._index.setdefault(self.key(buf, words[:j]), at)  # any equal words will do
        return at

    def find(self, buf: BufId, words: list) -> int | None:
        """The first memory word of ``words`` of ``buf``, or None if the image (or the one
        it follows) lacks them."""
        if buf not in self._loadable:
            return None
        src = self.parent.find(buf, words) if self.parent is not None else None
        return src if src is not None else self._index.get(self.key(buf, words))

    def staging(self) -> DramImage:
        """An empty image in the memory after this one, whose :meth:`find` also finds this
        one's words: where a run stages words it sends more than once (``accel.requests.
        gemm_requests``), so that they cross the link once and are LOADed each time."""
        return DramImage(self.cfg, after=self)

    def __len__(self) -> int:
        """Distinct blocks stored."""
        return self._blocks

    def header(self) -> list[int]:
        """The header's memory words: magic, length in memory words, SHA-256 of the
        words (eight 32-bit words), zeros."""
        h = hashlib.sha256(b"".join(w.to_bytes(-(-self.cfg.dram_bits // 8), "little")
                                    for w in self.words)).digest()
        fields = [MAGIC, len(self.words), *(int.from_bytes(h[i:i + 4], "little")
                                            for i in range(0, 32, 4))]
        fields += [0] * (HEADER_WORDS - len(fields))
        bits = sum(f << (32 * i) for i, f in enumerate(fields))
        mask = (1 << self.cfg.dram_bits) - 1
        return [(bits >> (self.cfg.dram_bits * i)) & mask for i in range(self.base)]


#: What an attention GEMM's tiles may load from the image (its weights are activations).
ATTENTION_CONSTANTS = (BufId.PARAMS, BufId.START)


def model_image(cfg: AccelConfig, calls: Iterable) -> DramImage:
    """The image of the GEMMs among ``calls`` (``models.golden.GemmCall``, as a traced
    forward pass gives them; the activations do not matter): every tile word of a constant
    GEMM (a linear layer), and the :data:`ATTENTION_CONSTANTS` of the others, a block
    whose words are all equal (one constant per head) widened to ``lanes`` words, so that
    the image is the same whatever sequence length was traced."""
    image = DramImage(cfg)
    for call in calls:
        for words in constant_tiles(cfg, call):
            for buf, block in words.items():
                if call.constant:
                    image.add(buf, block)
                elif buf in ATTENTION_CONSTANTS:
                    if block and all(b == block[0] for b in block):
                        block = [block[0]] * max(cfg.lanes, len(block))
                    image.add(buf, block, prefixes=True)
    return image


def resident_image(cfg: AccelConfig, cm) -> DramImage:
    """The image of a converted model (``models.golden.ConvertedModel``): its constant
    GEMMs, traced on one token (their words do not depend on it)."""
    from .baselines import trace  # the one golden trace helper

    return model_image(cfg, trace(cm, torch.zeros(1, dtype=torch.long)))
