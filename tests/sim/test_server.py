"""The simulated device as a server (``sim/csrc/server.cpp``): one client at a time, an idle
client is dropped, connect/close cycles are quick, a flood is held back by TCP flow control
instead of being buffered in the server's memory."""

import os
import socket
import subprocess
import time

import pytest

from accel.config import PRESETS
from accel.protocol import Cmd, FrameDecoder, Status, encode_frame
from host.driver import Device, parse_ident
from host.transport import SerialTransport
from sim.device import SimDevice

from ..helpers import FAST, simulator_binary

CFG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def sim_binary(sim_builds):
    return simulator_binary(CFG, sim_builds)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def identify_on(s: socket.socket, seq: int, timeout: float = 10.0) -> dict:
    """Send one IDENTIFY frame on ``s`` and wait for its answer."""
    s.sendall(encode_frame(Cmd.IDENTIFY, seq))
    dec, deadline = FrameDecoder(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(4096)
        assert data, "the server closed the connection instead of answering"
        for f in dec.feed(data):
            if getattr(f, "seq", None) == seq and hasattr(f, "payload"):
                assert f.cmd == Status.OK.value
                return parse_ident(f.payload)
    raise AssertionError("no IDENTIFY answer")


def identify_driver(url: str) -> dict:
    """IDENTIFY through the host driver (which retries after a link error)."""
    t = SerialTransport(url)
    try:
        return Device(t, CFG, **FAST).identify()
    finally:
        t.close()


def status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_idle_client_dropped_then_next_served(sim_binary):
    timeout = 1.0
    with SimDevice(sim_binary, idle_timeout=timeout) as sim:
        idle = connect(sim.port)
        time.sleep(0.1)  # the server has taken the idle one
        t0 = time.monotonic()
        with connect(sim.port) as waiting:  # queued behind the idle client
            assert identify_on(waiting, seq=7)["hash"] == CFG.hash32()
        waited = time.monotonic() - t0
        # served once the idle client was dropped, and not before
        assert timeout * 0.8 <= waited < timeout + 5, waited
        idle.settimeout(5)
        assert idle.recv(16) == b""  # the idle client saw the server close
        idle.close()


def test_a_client_that_keeps_talking_is_not_dropped(sim_binary):
    with SimDevice(sim_binary, idle_timeout=0.5) as sim, connect(sim.port) as s:
        for seq in range(6):  # 1.8 s on one connection, each gap well under the timeout
            assert identify_on(s, seq)["lanes"] == CFG.lanes
            time.sleep(0.3)


def test_many_connect_close_cycles_are_quick(sim_binary):
    with SimDevice(sim_binary) as sim:
        t0 = time.monotonic()
        for _ in range(300):
            connect(sim.port).close()
        with connect(sim.port) as s:
            assert identify_on(s, seq=1)["hash"] == CFG.hash32()
        # listen backlog 1 made this ~90 s (SYNs dropped, retried after 1 s); now ~0.1 s
        assert time.monotonic() - t0 < 10
        assert identify_driver(sim.url)["lanes"] == CFG.lanes


def test_flood_is_held_back_not_buffered(sim_binary):
    with SimDevice(sim_binary) as sim:
        identify_driver(sim.url)  # the server is up and has run
        base = status_kb(sim.pid, "VmRSS")
        s = connect(sim.port)
        s.setblocking(False)
        chunk = os.urandom(1 << 16)
        # offer 32 MiB of garbage and never read the answers (error frames); the server
        # takes it only as fast as the simulated device consumes it (a byte per cycle), so
        # stop once 10 MiB are out: kernel socket buffers plus what the device consumed
        sent, offered = 0, 32 << 20
        deadline = time.monotonic() + 30
        while sent < min(offered, 10 << 20) and time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
        peak = status_kb(sim.pid, "VmHWM")
        assert sent >= 10 << 20, sent
        # the server's memory stayed within its fixed buffers (it grew by 4 kB here; an
        # unbounded buffer grew by 6 MB at this point, by 28 MB at 32 MiB)
        assert (peak - base) * 1024 < 1 << 20, (base, peak, sent)
        # leave with a reset: the unsent rest is discarded, the server sees it at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        s.close()
        assert identify_driver(sim.url)["hash"] == CFG.hash32()
        assert sim.proc.poll() is None


def test_bad_arguments_refused(sim_binary):
    for args in (["--idle-timeout", "soon"], ["--idle-timeout", "-1"], ["not-a-port"]):
        proc = subprocess.run([str(sim_binary), *args], capture_output=True, text=True,
                              timeout=10)
        assert proc.returncode == 2 and "usage" in proc.stderr
    with pytest.raises(ValueError):
        SimDevice(sim_binary, idle_timeout=-1)
