"""The caller's side of a generation stream: NDJSON chunks in, events out.

BentoML hands a stream over in chunks of any size, so events are reassembled from lines. The
first event decides: ``started`` opens the generation, ``error`` is a refusal with the status
the caller should answer (prompt too long, queue full), anything else is a broken stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from bentochain.engines.llm.types import Delta, Event, Failed, Finished, Started, decode_event


class GenerationRefused(Exception):
    """The LLM service refused the generation (``event`` says why, with a status)."""

    def __init__(self, event: Failed) -> None:
        super().__init__(event.message)
        self.event = event


class GenerationBroken(Exception):
    """The stream ended or misbehaved before the generation started or finished."""


@dataclass
class OpenedGeneration:
    started: Started
    events: AsyncGenerator[Event, None]


def _merged(events: list[Event]) -> list[Event]:
    """Adjacent deltas that arrived together become one: one SSE event instead of many."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, Delta) and isinstance(last, Delta):
            merged[-1] = Delta(
                text=last.text + event.text, completion_tokens=event.completion_tokens
            )
        else:
            merged.append(event)
    return merged


async def read_events(chunks: AsyncIterator[str]) -> AsyncGenerator[Event, None]:
    """Events from NDJSON lines in chunks of any size.

    Closing this generator closes ``chunks``, so a reader that goes away stops the generation
    instead of leaving it running.
    """
    buffer = ""
    async with aclosing(chunks) as upstream:  # type: ignore[type-var]
        async for chunk in upstream:
            lines = (buffer + chunk).split("\n")
            buffer = lines.pop()
            events = [decode_event(line) for line in lines if line.strip()]
            if events and isinstance(events[-1], Finished | Failed):
                # The last event: read the (empty) rest first, so the call ends cleanly and
                # its connection is reused even when the reader stops here.
                async for rest in upstream:
                    buffer += rest
            for event in _merged(events):
                yield event
    if buffer.strip():
        for line in buffer.split("\n"):
            if line.strip():
                yield decode_event(line)


async def open_generation(chunks: AsyncIterator[str]) -> OpenedGeneration:
    """Wait for the LLM service to accept (``started``) or refuse the generation.

    A refusal raises ``GenerationRefused``; a failure of the call itself propagates as raised.
    """
    events = read_events(chunks)
    try:
        first = await anext(events)
    except StopAsyncIteration:
        raise GenerationBroken("the LLM service ended the generation without an answer") from None
    except BaseException:
        await events.aclose()
        raise
    if isinstance(first, Started):
        return OpenedGeneration(first, events)
    await events.aclose()
    if isinstance(first, Failed):
        raise GenerationRefused(first)
    raise GenerationBroken(f"the LLM service answered {first.type!r} before starting")
