"""Translation with a seq2seq model (Marian / opus-mt and alike) through ``generate``.

transformers 5 has no translation pipeline any more, and a pipeline would hide the batch: the
service hands whole batches (``serving.batching``) to ``translate``, which pads them once and
decodes them in one ``generate`` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Translator:
    def __init__(
        self,
        model_dir: Path,
        *,
        max_new_tokens: int,
        num_beams: int,
        packed_weights: bool = True,
        keep_freed_memory: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from bentochain.engines.memory import keep_freed_memory as keep_memory
        from bentochain.engines.packing import pack_if_possible

        if keep_freed_memory:
            keep_memory()

        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model: Any = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(self.device).eval()
        if packed_weights:
            pack_if_possible(self.model)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.max_source_tokens = int(
            getattr(self.model.config, "max_position_embeddings", None) or 512
        )

    def translate(self, texts: list[str]) -> list[str]:
        import torch

        if not texts:
            return []
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_source_tokens,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
            )
        return [str(t) for t in self.tokenizer.batch_decode(output, skip_special_tokens=True)]
