"""procedures.engine.guarded against the simulated board: outputs off on every path out.

The block switches the SMU on into a pixel, then ends in each way a procedure can (completion,
an exception, a cancellation); the board itself says what is on afterwards.
"""

from __future__ import annotations

import asyncio

import pytest

from firmware_protocol.spec import SmuMode
from station.procedures.engine import Exit, Guard, guarded

from .stationkit import sim_station


class Boom(Exception):
    pass


async def test_a_completed_block_switches_its_outputs_off_and_aborts_nothing(tmp_path):
    async with sim_station(tmp_path, ["otac"]) as (server, ctx):
        board, ended = ctx.board, []

        async def after(guard: Guard) -> None:
            ended.append((guard.exit, server.board.smu.output_on, server.board.mux))

        async with guarded(off=(board.smu, board.mux), off_unless_completed=(board.sweeper,),
                           after=after) as guard:
            await board.mux.select(1)
            await board.smu.configure(SmuMode.SOURCE_V, compliance=1e-3, integration_ms=5.0)
            await board.smu.source(3.0)
            assert server.board.smu.output_on and server.board.mux == 1
        # `after` runs once the outputs are off
        assert ended == [(Exit.COMPLETED, False, 0)] and guard.completed
        assert server.board.counters.requests["sweep_abort"] == 0


async def test_an_exception_aborts_switches_off_and_propagates(tmp_path):
    async with sim_station(tmp_path, ["otac"]) as (server, ctx):
        board, ended = ctx.board, []

        async def after(guard: Guard) -> None:
            ended.append(guard.exit)

        with pytest.raises(Boom):
            async with guarded(off=(board.smu, board.mux), off_unless_completed=(board.sweeper,),
                               after=after):
                await board.mux.select(1)
                await board.smu.configure(SmuMode.SOURCE_V, compliance=1e-3, integration_ms=5.0)
                await board.smu.source(3.0)
                raise Boom
        assert ended == [Exit.FAILED]
        assert not server.board.smu.output_on and server.board.mux == 0
        assert server.board.counters.requests["sweep_abort"] == 1


async def test_a_cancelled_block_switches_off_and_notes_the_cancel_first(tmp_path):
    async with sim_station(tmp_path, ["otac"]) as (server, ctx):
        board, order = ctx.board, []
        on = asyncio.Event()

        async def before() -> None:
            order.append(("before", server.board.smu.output_on))

        async def after(guard: Guard) -> None:
            order.append(("after", server.board.smu.output_on))

        async def block() -> None:
            async with guarded(off=(board.smu, board.mux), on_cancel=lambda: order.append(
                    ("cancelled", server.board.smu.output_on)), before=before, after=after):
                await board.mux.select(1)
                await board.smu.configure(SmuMode.SOURCE_V, compliance=1e-3, integration_ms=5.0)
                await board.smu.source(3.0)
                on.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(block())
        await on.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # noted at once (output still on), helpers stopped before the outputs, records after
        assert order == [("cancelled", True), ("before", True), ("after", False)]
        assert not server.board.smu.output_on and server.board.mux == 0
