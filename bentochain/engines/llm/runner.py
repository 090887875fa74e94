"""Forward passes of a Hugging Face causal LM over many sequences at once.

The model is the unmodified ``transformers`` model, loaded with the engine's attention function
(``kv.sequence_attention``). The runner hands it each row's positions and the step's
``StepKV`` as ``past_key_values``, through which every attention layer appends its keys and
values. Any decoder built on transformers' attention interface (Llama, Qwen2, Mistral and most
of the family) runs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bentochain.engines.llm.kv import SequenceKV, StepKV


class ModelRunner:
    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device

    def forward(self, rows: Sequence[SequenceKV], tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run each row's new ``tokens``; float32 logits [rows, vocab] of each row's last token.

        Every row brings the same number of new tokens: one per row in a decode step, or a
        single row's whole prompt in a prefill.
        """
        width = len(tokens[0])
        if any(len(new) != width for new in tokens):
            raise ValueError("every row of a step must bring the same number of tokens")
        step = StepKV(rows, width)
        positions = torch.tensor(
            [list(range(row.length, row.length + width)) for row in rows], dtype=torch.long
        )
        input_ids = torch.tensor([list(new) for new in tokens], dtype=torch.long)
        with torch.inference_mode():
            output = self.model(
                input_ids=input_ids.to(self.device),
                position_ids=positions.to(self.device),
                past_key_values=step,
                use_cache=True,
                logits_to_keep=1,
                bentochain_step=step,
            )
        step.advance()
        logits: torch.Tensor = output.logits[:, -1].float()
        return logits
