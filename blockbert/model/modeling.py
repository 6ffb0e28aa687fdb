"""BERT/RoBERTa encoder with pluggable attention, and its pre-training and QA heads (plain PyTorch, no file I/O:
:mod:`blockbert.formats.pretrained` adds ``from_pretrained``/``save_pretrained`` to the classes ``blockbert``
exports)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from blockbert.model.attention import SelfAttention
from blockbert.model.blocks import Blocks, blocks_of
from blockbert.model.config import BlockBertConfig
from blockbert.model.jagged import Packing, packing

# auto layout: a batch whose real tokens are at most this share of its positions runs unpadded (our threshold, from
# blockbert benchmark mode=layout on a CPU: docs/results.md, "Layouts of padded batches")
UNPAD_BELOW_FILL = 0.9


class Embeddings(nn.Module):
    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.position_offset = config.position_offset

    def forward(self, input_ids, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + self.position_offset  # [N]
        if self.token_type.num_embeddings == 1:  # RoBERTa: a single segment embedding
            token_type_ids = torch.zeros_like(token_type_ids)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))  # [B, N, hidden]


class Layer(nn.Module):
    """Post-LayerNorm Transformer layer as in BERT: attention, then feed-forward."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, key_mask=None, layout: Packing | Blocks | None = None):
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask, layout)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) weights, zero biases and padding row, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BlockBertModel(nn.Module):
    """The encoder: ``forward`` returns the last hidden states [B, N, hidden]."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        init_bert_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.config
        cfg.check_sequence_length(input_ids.shape[1])
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        key_mask = index = real = None
        if attention_mask is not None:
            key_mask = attention_mask.bool()  # [B, N]
            index = key_mask.reshape(-1).nonzero().squeeze(1)  # [T] real tokens; the host sync of a forward
            real = index.numel()
            if real == input_ids.numel():
                key_mask = index = None  # no padding: the kernels run unmasked (fused on CPU too), as transformers does
        x = self.embeddings(input_ids, token_type_ids)  # [B, N, hidden]
        B, N = input_ids.shape
        kind = self.layout_for(input_ids.numel(), real)
        layout: Packing | Blocks | None = None
        if kind != "padded":
            jagged = kind == "jagged"
            layout = packing(
                key_mask, B, N, cfg.head_counts, cfg.block_seq_len, jagged, x.device, index, cfg.block_major
            )
            x = layout.pack(x)  # [T, hidden]: the real tokens only
        elif cfg.block_major:
            layout = blocks_of(key_mask, B, N, cfg.num_blocks, cfg.block_seq_len)
            x = layout.to_blocks(x)  # [b, B, m, hidden]
            key_mask = None  # the layout holds it
        for layer in self.layers:
            if cfg.gradient_checkpointing and self.training:
                # nested tensors fail the non-reentrant kind's check of the recomputed tensors' metadata
                check = "none" if kind == "jagged" else "default"
                x = checkpoint(layer, x, key_mask, layout, use_reentrant=False, determinism_check=check)
            else:
                x = layer(x, key_mask, layout)
        if isinstance(layout, Blocks):
            return layout.from_blocks(x)  # [B, N, hidden]
        return x if layout is None else layout.unpack(x)  # [B, N, hidden]; zeros at padding when unpadded

    def layout_for(self, positions: int, real: int | None) -> str:
        """The layout of a batch of ``positions`` with ``real`` real tokens (None: no mask): padded when none is real,
        else the configured one, or for auto, unpadded when at most UNPAD_BELOW_FILL of the positions are real, else
        padded."""
        if real == 0:  # nothing to pack
            return "padded"
        if self.config.layout != "auto":
            return self.config.layout
        return "unpadded" if real is not None and real <= UNPAD_BELOW_FILL * positions else "padded"


class MaskedLMHead(nn.Module):
    """Transform + LayerNorm, then a decoder tied to the input word embeddings."""

    def __init__(self, config: BlockBertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder_weight = word_embeddings.weight  # tied
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_bert_weights(self, config.initializer_range)  # the tied decoder is no submodule: untouched

    def forward(self, hidden):
        h = self.norm(F.gelu(self.transform(hidden)))
        return F.linear(h, self.decoder_weight, self.bias)  # [..., vocab]


class NextSentenceHead(nn.Module):
    """BERT's pooler (dense + tanh on the first token) and a two-way classifier."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)
        init_bert_weights(self, config.initializer_range)

    def forward(self, hidden):
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))  # [B, 2]


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # [B, N, vocab]; [M, vocab] at the labelled positions with masked_only


@dataclass
class PreTrainingOutput:
    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    logits: torch.Tensor  # [B, N, vocab]; [M, vocab] at the labelled positions with masked_only
    nsp_logits: torch.Tensor  # [B, 2]


@dataclass
class QuestionAnsweringOutput:
    loss: torch.Tensor | None
    start_logits: torch.Tensor  # [B, N]
    end_logits: torch.Tensor  # [B, N]


def _masked_lm(head: MaskedLMHead, hidden, labels, masked_only: bool):
    """(loss, logits): cross-entropy over positions whose label is not -100.

    ``masked_only`` projects to the vocabulary only at those positions (as fairseq does): the same loss
    and gradients for a fraction of the work, with logits [M, vocab] instead of [B, N, vocab].
    """
    if labels is None:
        return None, head(hidden)
    if masked_only:
        index = (labels.reshape(-1) != -100).nonzero().squeeze(1)  # [M]; the one host sync of the head
        logits = head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, index))  # [M, vocab]
        if index.numel() == 0:  # nothing masked: a zero loss that keeps the graph
            return logits.sum() * 0.0, logits
        return F.cross_entropy(logits, labels.reshape(-1).index_select(0, index)), logits
    logits = head(hidden)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100), logits


class BlockBertForMaskedLM(nn.Module):
    """Masked-LM pre-training (RoBERTa-1seq, SparseBert, BlockBert)."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.config = config
        self.encoder = BlockBertModel(config)
        self.mlm = MaskedLMHead(config, self.encoder.embeddings.word)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, masked_only=False):
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return MaskedLMOutput(*_masked_lm(self.mlm, hidden, labels, masked_only))


class BlockBertForPreTraining(nn.Module):
    """Masked-LM plus next-sentence prediction (Google BERT, RoBERTa-2seq)."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.config = config
        self.encoder = BlockBertModel(config)
        self.mlm = MaskedLMHead(config, self.encoder.embeddings.word)
        self.nsp = NextSentenceHead(config)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        next_sentence_label=None,
        masked_only=False,
    ):
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        mlm_loss, logits = _masked_lm(self.mlm, hidden, labels, masked_only)
        nsp_logits = self.nsp(hidden)
        nsp_loss = None if next_sentence_label is None else F.cross_entropy(nsp_logits, next_sentence_label)
        parts = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(parts) if parts else None
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, logits, nsp_logits)


class BlockBertForQuestionAnswering(nn.Module):
    """Extractive QA: two linear outputs give start and end logits for every token."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.config = config
        self.encoder = BlockBertModel(config)
        self.qa = nn.Linear(config.hidden_size, 2)
        init_bert_weights(self.qa, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None):
        logits = self.qa(self.encoder(input_ids, attention_mask, token_type_ids))  # [B, N, 2]
        if attention_mask is not None:  # padding is no answer, whatever the layout computed there
            logits = logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)
        start_logits, end_logits = logits.unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start_logits.shape[1]  # positions outside the sequence are ignored, as in BERT
            start = start_positions.clamp(0, n)
            end = end_positions.clamp(0, n)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=n) + F.cross_entropy(end_logits, end, ignore_index=n)
            ) / 2
        return QuestionAnsweringOutput(loss, start_logits, end_logits)


__all__ = [
    "BlockBertModel",
    "BlockBertForMaskedLM",
    "BlockBertForPreTraining",
    "BlockBertForQuestionAnswering",
    "MaskedLMOutput",
    "PreTrainingOutput",
    "QuestionAnsweringOutput",
]
