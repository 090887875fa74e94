"""One span per generation in the LLM service, with OpenTelemetry's GenAI attributes.

The LLM service is where a generation's real numbers are known: the prompt's token count once
the template is applied, the tokens generated, why it stopped and when its first token came.
The span is a child of the request span BentoML opens, so it sits in the caller's trace under
the Gateway or chain step that asked for it. Names follow the GenAI semantic conventions
(``gen_ai.*``); the time to first token has no span attribute there yet and is reported as
``gen_ai.server.time_to_first_token`` (seconds), the name of the conventions' metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from bentochain.engines.llm.types import Delta, Failed, Finished, GenerationRequest, Started
from bentochain.observability.tracing import tracer as bentoml_tracer

Event = Started | Delta | Finished | Failed
PROVIDER = "bentochain"


def operation(request: GenerationRequest) -> str:
    return "chat" if request.messages is not None else "text_completion"


async def traced_generation(
    request: GenerationRequest,
    model: str,
    batches: AsyncGenerator[Sequence[Event], None],
    tracer: Tracer | None = None,
) -> AsyncGenerator[Sequence[Event], None]:
    """``batches`` passed through, observed by a ``{operation} {model}`` span (from BentoML's
    tracer unless ``tracer`` is given)."""
    name = operation(request)
    params = request.params
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": name,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model,
        "gen_ai.request.temperature": params.temperature,
        "gen_ai.request.top_p": params.top_p,
    }
    if params.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = params.max_tokens
    if params.seed is not None:
        attributes["gen_ai.request.seed"] = params.seed
    span = (tracer or bentoml_tracer()).start_span(
        f"{name} {model}", kind=SpanKind.INTERNAL, attributes=attributes
    )
    if not span.is_recording():  # tracing off or not sampled: nothing to observe
        span.end()
        async with aclosing(batches):  # closed with us: the engine drops a left request
            async for batch in batches:
                yield batch
        return
    started = time.monotonic()
    first_token = False
    outcome = "cancelled"  # the caller left before the end
    try:
        async with aclosing(batches):
            async for batch in batches:
                for event in batch:
                    if isinstance(event, Started):
                        span.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
                    elif isinstance(event, Delta) and not first_token:
                        first_token = True
                        ttft = time.monotonic() - started
                        span.set_attribute("gen_ai.server.time_to_first_token", ttft)
                        span.add_event("gen_ai.first_token")
                    elif isinstance(event, Finished):
                        outcome = "finished"
                        span.set_attribute("gen_ai.response.model", model)
                        span.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
                        span.set_attribute("gen_ai.usage.output_tokens", event.completion_tokens)
                        reasons = [event.finish_reason]
                        span.set_attribute("gen_ai.response.finish_reasons", reasons)
                    elif isinstance(event, Failed):
                        outcome = "failed"
                        span.set_attribute("error.type", event.code)
                        span.set_status(Status(StatusCode.ERROR, event.message))
                yield batch
    except (GeneratorExit, asyncio.CancelledError):
        raise  # the caller left: "cancelled" below
    except Exception as exc:
        outcome = "failed"
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        if outcome == "cancelled":
            span.set_attribute("error.type", "cancelled")
        span.end()
