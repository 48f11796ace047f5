"""The board's clocking (``accel.board``) and the board top: PLL settings inside the ECP5's
limits, the UART divisor and its error, and the board top answering a frame over its
serial line at the chosen clock and rate."""

import json
from fractions import Fraction

import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from accel.board import (
    BOARD_BAUDS,
    BOARD_FILE,
    BOARD_OSC_HZ,
    MAX_BAUD_ERROR,
    choose_clock,
    pll_outputs,
    read_board,
    uart_divisor,
)
from accel.config import PRESETS
from accel.protocol import Cmd, Frame, FrameDecoder, Status, encode_frame, ident_layout, ident_value
from hw.board import Ulx3sTop


def test_every_pll_setting_is_inside_the_ecp5_limits_and_makes_its_frequency():
    outs = pll_outputs()
    assert len(outs) > 100
    for f, p in outs.items():
        assert f == Fraction(BOARD_OSC_HZ * p.clkfb_div, p.clki_div)
        assert p.f_out_hz == pytest.approx(float(f), rel=1e-12)
        assert 3.125e6 <= BOARD_OSC_HZ / p.clki_div and 400e6 <= p.f_vco_hz <= 800e6
        assert 1 <= p.clkfb_div <= 80 and 1 <= p.clkop_div <= 128


@pytest.mark.parametrize("limit", [24.0, 33.2, 51.6, 75.0, 100.0, 133.0])
@pytest.mark.parametrize("baud", BOARD_BAUDS)
def test_the_clock_is_the_fastest_below_the_limit_with_a_good_divisor(limit, baud):
    c = choose_clock(limit, baud)
    assert c.clock_hz <= limit * 1e6 and abs(c.baud_error) <= MAX_BAUD_ERROR
    assert c.divisor >= 4 and c.divisor == round(c.clock_hz / baud)
    assert c.baud_error == pytest.approx(c.clock_hz / c.divisor / baud - 1, abs=1e-12)
    faster = [p.f_out_hz for f, p in pll_outputs().items()
              if c.clock_hz < f <= limit * 1e6
              and abs(uart_divisor(p.f_out_hz, baud)[1]) <= MAX_BAUD_ERROR]
    assert not faster or max(faster) < c.clock_hz / 0.98  # only for an exact divisor
    assert choose_clock(75.0, 3_000_000).as_dict()["uart_divisor"] == 25  # exact: 75 MHz


def test_no_clock_for_a_rate_the_pll_cannot_serve_is_refused():
    with pytest.raises(ValueError, match="no PLL clock at or below 5 MHz"):
        choose_clock(5.0, 3_000_000)
    with pytest.raises(ValueError, match="baud rate must be positive"):
        choose_clock(50.0, 0)


def test_board_top_answers_identify_over_its_serial_line():
    cfg = PRESETS["tiny"]
    clock = choose_clock(48.0, 3_000_000)  # 45 MHz, 15 cycles a bit
    dut = Ulx3sTop(cfg, clock)
    div = clock.divisor
    frame = encode_frame(Cmd.IDENTIFY, 7)
    got = bytearray()

    async def line_in(ctx):
        for byte in frame:
            bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
            for b in bits:
                ctx.set(uart_rx_pin, b)
                await ctx.tick().repeat(div)

    async def line_out(ctx):
        # sample the tx line mid-bit after each start edge
        while len(got) < 40:
            await ctx.tick().until(uart_tx_pin == 0)
            await ctx.tick().repeat(div // 2)
            byte = 0
            for i in range(8):
                await ctx.tick().repeat(div)
                byte |= ctx.get(uart_tx_pin) << i
            await ctx.tick().repeat(div)
            got.append(byte)
            frames = FrameDecoder().feed(bytes(got))
            if frames:
                return

    # the top's UART pins: without a platform the receiver's input and the transmitter's
    # output are the submodules' ports
    elaborated = dut.elaborate(None)
    dut._MustUse__silence = True  # simulated through its elaborated module
    uart_rx_pin = elaborated.submodules.uart_rx.rx
    uart_tx_pin = elaborated.submodules.uart_tx.tx
    sim = Simulator(elaborated)
    sim.add_clock(1 / clock.clock_hz)
    sim.add_testbench(line_in)
    sim.add_testbench(line_out)
    sim.run_until((len(frame) + 60) * 10 * div / clock.clock_hz)
    frames = FrameDecoder().feed(bytes(got))
    assert len(frames) == 1 and isinstance(frames[0], Frame)
    reply = frames[0]
    assert reply.seq == 7 and reply.cmd == Status.OK.value
    word = data.Const(ident_layout(), int.from_bytes(reply.payload, "little"))
    assert word.hash == ident_value(cfg)["hash"] and word.lanes == cfg.lanes


def test_the_bundles_board_record_is_read_back_and_an_inconsistent_one_refused(tmp_path):
    assert read_board(tmp_path) is None  # a bundle built without --pnr or --bitstream
    rec = choose_clock(75.0, 3_000_000).as_dict()
    (tmp_path / BOARD_FILE).write_text(json.dumps(rec))
    assert read_board(tmp_path) == rec
    (tmp_path / BOARD_FILE).write_text(json.dumps({**rec, "uart_divisor": 24}))
    with pytest.raises(ValueError, match="uart_divisor 24 disagrees with clock_hz 7.5e"):
        read_board(tmp_path)
    (tmp_path / BOARD_FILE).write_text(json.dumps({**rec, "baud": -1}))
    with pytest.raises(ValueError, match="must be positive"):
        read_board(tmp_path)
    (tmp_path / BOARD_FILE).write_text("{")
    with pytest.raises(ValueError, match="board.json: unreadable board record"):
        read_board(tmp_path)
