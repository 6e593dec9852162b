"""Text encoders: list of captions → feature [B, output_dim].

The default is a small pre-norm transformer over a WordPiece tokenizer fitted to the
training captions and run by the ``tokenizers`` library; the tokenizer is saved with the run
(``tokenizer.json``) and travels with the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import nn

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


def train_tokenizer(captions: Iterable[str], vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer (NFKC, lower-cased, whitespace + punctuation split) fitted to ``captions``.

    The vocabulary is [PAD], [UNK], [CLS], [SEP] (ids 0..3), every character seen (as a word
    start and as a ``##`` continuation, so any word made of seen characters is encodable),
    then the most frequent words (ties broken alphabetically) up to ``vocab_size``. It is a
    pure function of the captions: the ``tokenizers`` trainers break ties in hash order,
    which would make two runs with the same seed differ. Encodings are ``[CLS] tokens [SEP]``.
    """
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption)))
    chars = sorted({c for word in counts for c in word})
    vocab = [PAD, UNK, CLS, SEP, *chars, *(f"##{c}" for c in chars)]
    known = set(vocab)
    by_frequency = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    vocab += [w for w, _ in by_frequency if w not in known][: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A {SEP}", special_tokens=[(CLS, 2), (SEP, 3)])
    return tok


class TransformerTextEncoder(nn.Module):
    """Token + learned position embeddings → pre-norm TransformerEncoder → masked mean or [CLS] pooling."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        width: int = 256,
        layers: int = 2,
        heads: int = 4,
        max_tokens: int = 48,
        pooling: str = "mean",
        dropout: float = 0.1,
    ):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"text_pooling must be 'mean' or 'cls', got {pooling!r}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.token_embedding = nn.Embedding(tokenizer.get_vocab_size(), width, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.output_dim = width

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids`` [B, L] int64 and ``mask`` [B, L] bool (True on real tokens), L ≤ max_tokens."""
        encodings = self.tokenizer.encode_batch(list(captions))
        length = min(self.max_tokens, max(len(e.ids) for e in encodings))
        ids = torch.zeros(len(encodings), length, dtype=torch.long)
        for row, enc in enumerate(encodings):
            tokens = enc.ids[:length]
            if len(enc.ids) > length:
                tokens[-1] = enc.ids[-1]  # keep [SEP] when truncating
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != 0

    def forward(self, captions: list[str]) -> torch.Tensor:
        device = self.position_embedding.device
        return self.encode(*(x.to(device) for x in self.tokenize(captions)))

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] and mask [B, L] (True on real tokens; :meth:`tokenize`) → feature [B, width]."""
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        x = self.norm(self.transformer(x, src_key_padding_mask=~mask))
        if self.pooling == "cls":
            return x[:, 0]
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1)
