"""Byte transports under the driver: one interface, a board's serial port or the simulator's
TCP port through the same pyserial call, and a fault-injecting wrapper for tests.

``serial.serial_for_url`` opens ``/dev/ttyUSB0`` (the ULX3S's FT231X, at
:data:`accel.protocol.BAUD`) and ``socket://127.0.0.1:PORT`` (:mod:`sim.device`) alike.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Protocol

import serial

from accel.protocol import BAUD


class Transport(Protocol):
    """Send bytes; receive what arrives within a timeout."""

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the device."""

    def recv(self, timeout: float) -> bytes:
        """Bytes received within ``timeout`` seconds (``b""`` if none)."""

    def close(self) -> None:
        """Release the port."""


class SerialTransport:
    """A pyserial port: a device path or any pyserial URL (``socket://``, ``loop://``)."""

    def __init__(self, url: str, baud: int = BAUD, connect_timeout: float = 5.0):
        deadline = time.monotonic() + connect_timeout
        delay = 0.02
        while True:
            try:
                self.port = serial.serial_for_url(url, baudrate=baud, timeout=0.1)
                break
            except serial.SerialException as e:  # e.g. the simulator is still starting
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot open {url}: {e}") from None
                time.sleep(delay)
                delay = min(0.5, delay * 2)
        self.url = url

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        self.port.write(data)

    def recv(self, timeout: float) -> bytes:
        """Wait up to ``timeout`` for a first byte, then take whatever else is there."""
        self.port.timeout = timeout
        first = self.port.read(1)
        if not first:
            return b""
        self.port.timeout = 0
        return first + self.port.read(1 << 16)

    def close(self) -> None:
        """Close the port."""
        self.port.close()


#: Fault kinds of :class:`FaultyTransport`.
FAULTS = ("flip", "drop", "duplicate", "truncate", "delay", "garbage")


class FaultyTransport:
    """Wraps a transport and damages traffic in both directions: bit flips, dropped,
    duplicated and truncated chunks, delays and inserted garbage. ``rate`` is the chance
    per frame sent (the driver sends one frame per :meth:`send`) and per 256 bytes
    received (the receive side sees arbitrary chunks). ``injected`` counts what was done."""

    def __init__(self, inner: Transport, rate: float, seed: int = 0,
                 kinds: tuple[str, ...] = FAULTS, delay_s: float = 0.02):
        bad = [k for k in kinds if k not in FAULTS]
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; known: {FAULTS}")
        self.inner, self.rate, self.kinds, self.delay_s = inner, rate, kinds, delay_s
        self.rng = random.Random(seed)
        self.injected: Counter = Counter()

    def _damage(self, data: bytes, direction: str) -> list[bytes]:
        units = 1 if direction == "tx" else len(data) / 256
        if not data or self.rng.random() >= 1 - (1 - self.rate) ** units:
            return [data]
        kind = self.rng.choice(self.kinds)
        self.injected[f"{direction}:{kind}"] += 1
        if kind == "flip":
            b = bytearray(data)
            i = self.rng.randrange(len(b))
            b[i] ^= 1 << self.rng.randrange(8)
            return [bytes(b)]
        if kind == "drop":
            return []
        if kind == "duplicate":
            return [data, data]
        if kind == "truncate":
            return [data[: self.rng.randrange(len(data))]]
        if kind == "delay":
            time.sleep(self.delay_s * self.rng.random())
            return [data]
        junk = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 24)))
        return [junk + data] if self.rng.random() < 0.5 else [data + junk]

    def send(self, data: bytes) -> None:
        """Send ``data``, perhaps damaged."""
        for part in self._damage(data, "tx"):
            if part:
                self.inner.send(part)

    def recv(self, timeout: float) -> bytes:
        """Receive, perhaps damaged."""
        return b"".join(self._damage(self.inner.recv(timeout), "rx"))

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()
