"""A Ray Serve chat server, as a Ray Serve user would write it: ``@serve.batch`` over the model.

Run by ``loadtest.peers`` inside a virtual environment of its own (Ray and its dependencies are
not the project's); it imports nothing from bentochain. Requests that arrive together (up to
``max_batch_size`` within ``batch_wait_timeout_s``) are prefilled as one left-padded batch and
decoded together, one token per step for every row, each row streamed as it goes (Serve's
streaming batch API: a list per step, ``StopIteration`` for a row that is done). A request that
arrives while a batch decodes waits for the next batch: there is no continuous batching.

Usage: ``python ray_app.py MODEL_DIR PORT MAX_BATCH_SIZE``; OpenAI-style streaming chat at
``POST /v1/chat/completions``, ``GET /health``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

MODEL_DIR, PORT, MAX_BATCH = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


@serve.deployment(max_ongoing_requests=256)
class Chat:
    def __init__(self) -> None:
        self.tokenizer: Any = AutoTokenizer.from_pretrained(MODEL_DIR)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
        self.eos = self.tokenizer.eos_token_id

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.01)
    async def generate(
        self, prompts: list[str], budgets: list[int]
    ) -> AsyncGenerator[list[Any], None]:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        cache = DynamicCache()
        done = [False] * len(prompts)
        produced = [0] * len(prompts)
        with torch.inference_mode():
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            for _ in range(max(budgets)):
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                tokens = out.logits[:, -1].argmax(-1)
                step: list[Any] = []
                for row, token in enumerate(tokens.tolist()):
                    if done[row]:
                        step.append(StopIteration)
                        continue
                    produced[row] += 1
                    finished = token == self.eos or produced[row] >= budgets[row]
                    step.append(
                        {
                            "text": self.tokenizer.decode([token]),
                            "finished": finished,
                            "tokens": produced[row],
                        }
                    )
                    done[row] = finished
                yield step
                await asyncio.sleep(0)  # let Serve hand this step's tokens to their streams now
                if all(done):
                    return
                ids = tokens[:, None]
                mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
                position = position[:, -1:] + 1

    async def __call__(self, request: Request) -> Response:
        if request.url.path == "/health":
            return JSONResponse({"ok": True})
        body = await request.json()
        prompt = self.tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, tokenize=False
        )
        budget = int(body.get("max_tokens") or 16)

        async def events() -> AsyncGenerator[str, None]:
            created = int(time.time())
            tokens = 0
            async for piece in self.generate(prompt, budget):
                tokens = piece["tokens"]
                chunk = {
                    "object": "chat.completion.chunk",
                    "created": created,
                    "choices": [{"index": 0, "delta": {"content": piece["text"]}}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"completion_tokens": tokens}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    import threading

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(Chat.bind(), route_prefix="/", blocking=False)
    print("ready", flush=True)
    threading.Event().wait()
