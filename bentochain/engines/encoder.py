"""Sentence embeddings from a transformers encoder, computed as sentence-transformers does.

Mean pooling over the attention mask, then L2 normalisation: the recipe of all-MiniLM-L6-v2
and most sentence-transformers models. Loading with plain transformers keeps the service free
of sentence-transformers' training stack at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [texts, dimensions], unit length
    token_counts: list[int]


class EncodedText(BaseModel):
    """One text's embedding and how many tokens the model read of it: what the Embedder
    service answers.

    The vector travels as little-endian float32 bytes (what OpenAI's ``base64`` format carries):
    between services that pickles as one buffer instead of hundreds of Python floats.
    """

    vector: bytes
    tokens: int

    @classmethod
    def of(cls, vector: np.ndarray, tokens: int) -> EncodedText:
        return cls(vector=np.asarray(vector, dtype="<f4").tobytes(), tokens=tokens)

    @classmethod
    def batch(cls, embeddings: Embeddings) -> list[EncodedText]:
        """One ``EncodedText`` per text the encoder read."""
        return [
            cls.of(vector, tokens)
            for vector, tokens in zip(embeddings.vectors, embeddings.token_counts, strict=True)
        ]

    def floats(self) -> list[float]:
        return [float(x) for x in np.frombuffer(self.vector, dtype="<f4")]

    @property
    def dimensions(self) -> int:
        return len(self.vector) // 4


class SentenceEncoder:
    def __init__(
        self,
        model_dir: Path,
        max_seq_length: int | None = None,
        *,
        packed_weights: bool = True,
        keep_freed_memory: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from bentochain.engines.memory import keep_freed_memory as keep_memory
        from bentochain.engines.packing import pack_if_possible

        if keep_freed_memory:
            keep_memory()

        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model: Any = AutoModel.from_pretrained(model_dir).to(self.device).eval()
        if packed_weights:
            pack_if_possible(self.model)
        self.max_seq_length = max_seq_length or self._model_max_length(model_dir)
        self.pooling = self._pooling_mode(model_dir)
        self.dimensions = int(self.model.config.hidden_size)

    def _model_max_length(self, model_dir: Path) -> int:
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.is_file():
            value = json.loads(st_config.read_text()).get("max_seq_length")
            if value:
                return int(value)
        limits = [
            int(self.model.config.max_position_embeddings),
            int(getattr(self.tokenizer, "model_max_length", 1 << 30)),
        ]
        return min(limits)

    @staticmethod
    def _pooling_mode(model_dir: Path) -> str:
        """``mean`` or ``cls``, as the model's sentence-transformers pooling config says."""
        pooling = model_dir / "1_Pooling" / "config.json"
        if pooling.is_file():
            config = json.loads(pooling.read_text())
            if config.get("pooling_mode_cls_token"):
                return "cls"
            if not config.get("pooling_mode_mean_tokens", True):
                raise ValueError(f"unsupported pooling in {pooling}: only mean and cls are")
        return "mean"

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> Embeddings:
        import torch

        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return Embeddings(
            vectors=vectors.cpu().numpy(),
            token_counts=[int(n) for n in mask.sum(dim=1).tolist()],
        )
