"""CAREER: a pre-LayerNorm causal transformer over job sequences (pure PyTorch).

Faithful to the paper (Vafa et al., TMLR 2024) and its fairseq code: at each year the input is
the embedding of last year's job (`<bos>` first) plus learned embeddings of the covariates of the
year being predicted (calendar year, education) and of static covariates (location, gender,
ethnicity, birth year), plus sinusoidal positions; pre-LN blocks with GELU and dropout (also on
attention); untied output layer. The default output is two-stage: a "stay" logit gives
P(same job as last year) = sigmoid(stay), and otherwise a softmax over all other jobs (the output
every model kind shares: `trainer.models.output`). Kind "career" of `trainer.models.registry`.

No Ray or DeepSpeed here: parallelism is applied from outside (`trainer/engine.py`).
Shapes: B people, T years, C width, V jobs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from data_shards.vocab import BOS_ID, PAD_ID, UNK_ID  # the vocabulary's special ids, defined once
from trainer.models import output
from trainer.models.output import JobModel, check_covariates, check_kind, check_sizes

__all__ = [
    "BOS_ID",
    "PAD_ID",
    "UNK_ID",
    "COVARIATES",
    "KIND",
    "Career",
    "ModelConfig",
    "build_model",
]

#: Attention kernels SDPA may use (it picks among them as usual). cuDNN's is left out on purpose:
#: it plans each new (batch, length) shape, and token-budget batches change shape every update
#: (it cost ~50 ms per update on an H200).
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
COVARIATES = ("year", "education", "location", "gender", "ethnicity", "birth_year")
KIND = "career"  # its name in the registry of model kinds (trainer.models.registry)


@dataclass
class ModelConfig:
    """Architecture. `vocab_sizes` holds the job field and every covariate the model embeds."""

    vocab_sizes: dict[str, int] = field(default_factory=dict)
    covariates: tuple[str, ...] = COVARIATES
    n_layer: int = 12
    d_model: int = 192
    n_head: int = 3
    d_ff: int = 768
    dropout: float = 0.1
    two_stage: bool = True
    word_dropout: float = (
        0.0  # > 0: the paper's mixture for rationalization (history positions hidden)
    )
    kind: str = KIND

    def __post_init__(self) -> None:
        check_kind(self.kind, KIND)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if not 0 <= self.dropout < 1 or not 0 <= self.word_dropout < 1:
            raise ValueError("dropout rates must be in [0, 1)")
        self.covariates = check_covariates(self.covariates, COVARIATES, KIND)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["covariates"] = list(self.covariates)
        return out


#: Architectures for scaling experiments (vocab sizes come from the dataset).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, d_model=32, n_head=2, d_ff=64, dropout=0.0),
    # For panels of a few thousand person-years trained from scratch (wagepan: 4,360): narrow,
    # shallow and heavily regularised, since the data, not the compute, is what is scarce.
    "panel": dict(n_layer=2, d_model=64, n_head=2, d_ff=256, dropout=0.3),
    "small": dict(n_layer=4, d_model=128, n_head=4, d_ff=512),
    "paper": dict(n_layer=12, d_model=192, n_head=3, d_ff=768),
    "medium": dict(n_layer=12, d_model=512, n_head=8, d_ff=2048),
    "large": dict(n_layer=16, d_model=768, n_head=12, d_ff=3072),
}


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) fixed sinusoidal position encodings (fairseq's layout: sin half, cos half)."""
    half = dim // 2
    scale = math.log(10000) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -scale)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.ln_ff = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.d_ff, config.d_model),
        )  # fmt: skip
        self.dropout = nn.Dropout(config.dropout)
        self.attn_dropout = config.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, H, T, C/H)
        with sdpa_kernel(ATTENTION_BACKENDS):
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=self.attn_dropout if self.training else 0.0,
            )  # fmt: skip
        x = x + self.dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))
        return x + self.dropout(self.ff(self.ln_ff(x)))


class Career(JobModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        check_sizes(config.vocab_sizes, config.covariates, KIND)
        self.config = config
        C = config.d_model
        self.job_embedding = nn.Embedding(config.vocab_sizes["job"], C, padding_idx=PAD_ID)
        self.covariate_embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(config.vocab_sizes[name], C, padding_idx=PAD_ID)
                for name in config.covariates
            }
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, config.vocab_sizes["job"])
        self.stay_head = nn.Linear(C, 1) if config.two_stage else None
        self.embed_scale = math.sqrt(C)
        self.apply(self.init_weights)

    # ------------------------------------------------------------------ forward
    def _word_dropout_mask(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Causal mask that also hides random history positions (training only)."""
        if not (self.training and self.config.word_dropout > 0):
            return None
        B, T = inputs.shape
        keep = torch.rand(B, T, device=inputs.device) >= self.config.word_dropout
        keep[:, 0] = True  # <bos> stays visible
        causal = torch.ones(T, T, dtype=torch.bool, device=inputs.device).tril()
        mask = causal[None] & keep[:, None, :]
        mask |= torch.eye(T, dtype=torch.bool, device=inputs.device)[None]  # always see yourself
        return mask[:, None]  # (B, 1, T, T)

    def represent(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden state at each year (B, T, C): a representation of the history up to that year."""
        inputs = batch["inputs"]
        B, T = inputs.shape
        x = self.job_embedding(inputs) * self.embed_scale
        for name in self.config.covariates:
            if name in batch:
                x = x + self.covariate_embeddings[name](batch[name])
        x = x + sinusoidal_positions(T, self.config.d_model, inputs.device).to(x.dtype)[None]
        x = self.dropout(x)
        mask = self._word_dropout_mask(inputs)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Job logits (B, T, V) and stay logits (B, T) (None for the one-stage model)."""
        h = self.represent(batch)
        logits = self.head(h)
        stay = self.stay_head(h).squeeze(-1) if self.stay_head is not None else None
        return logits, stay

    def flops_per_token(self, seq_len: float) -> float:
        """Training FLOPs per job-year token: 6 x parameters + attention over `seq_len` positions
        (nanoGPT's estimate)."""
        cfg = self.config
        return 6 * self.num_parameters() + 12 * cfg.n_layer * cfg.d_model * seq_len

    # ------------------------------------------------------------------ probabilities
    # `log_probs`, `token_log_probs` and `nll` come from `JobModel` (trainer.models.output).
    log_probs_from_logits = staticmethod(output.log_probs_from_logits)
    target_log_probs = staticmethod(output.target_log_probs)


def build_model(vocab_sizes: dict[str, int], preset: str = "paper", **overrides) -> Career:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {', '.join(PRESETS)}")
    return Career(ModelConfig(vocab_sizes=dict(vocab_sizes), **{**PRESETS[preset], **overrides}))
