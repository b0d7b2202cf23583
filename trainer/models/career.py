"""CAREER: a pre-LayerNorm causal transformer over job sequences (pure PyTorch).

Faithful to the paper (Vafa et al., TMLR 2024) and its fairseq code: at each year the input is
the embedding of last year's job (`<bos>` first) plus learned embeddings of the covariates of the
year being predicted (calendar year, education) and of static covariates (location, gender,
ethnicity, birth year), plus sinusoidal positions; pre-LN blocks with GELU and dropout (also on
attention); untied output layer. The default output is two-stage: a "stay" logit gives
P(same job as last year) = sigmoid(stay), and otherwise a softmax over all other jobs (the output
every model kind shares: `trainer.models.output`). Kind "career" of `trainer.models.registry`.

Incremental decoding for sampling (`start_cache`, `decode_step`, `DecodeCache`; inference only):
a batch of prefixes runs once, then every path continuing a prefix costs one position per step,
with the same log-probabilities as the full forward (`tests/test_decode.py`).

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
from trainer.models import dropout as hash_dropout
from trainer.models import output
from trainer.models.output import JobModel, check_covariates, check_kind, check_sizes

__all__ = [
    "BOS_ID",
    "DecodeCache",
    "PAD_ID",
    "UNK_ID",
    "COVARIATES",
    "KIND",
    "Career",
    "ModelConfig",
    "Packing",
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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Scaled dot-product attention (B, H, T, C/H), causal when `mask` (True: may attend) is None.

    With attention dropout on a CPU tensor, the computation of SDPA's math kernel with the hash
    dropout mask on the weights (`trainer.models.dropout`): SDPA would take the same math path
    there and draw its mask with `bernoulli_`. Otherwise SDPA's own kernels."""
    if dropout_p > 0 and hash_dropout.applies(q):
        T = q.shape[-2]
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, T, T)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return hash_dropout.dropout(weights, dropout_p) @ v
    with sdpa_kernel(ATTENTION_BACKENDS):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout_p
        )


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.ln_ff = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            hash_dropout.Dropout(config.dropout),
            nn.Linear(config.d_ff, config.d_model),
        )
        self.dropout = hash_dropout.Dropout(config.dropout)
        self.attn_dropout = config.dropout

    def heads(
        self, x: torch.Tensor, packing: Packing | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values (..., T, C) -> each (..., H, T, C/H); from packed rows (N, C)
        when `packing` is given (projected as rows, then laid out (B, T) for attention)."""
        qkv = self.qkv(self.ln_attn(x))
        if packing is not None:
            qkv = packing.pad(qkv)  # (B, T, 3C)
        *lead, T, C3 = qkv.shape
        C = C3 // 3
        return tuple(
            t.view(*lead, T, self.n_head, C // self.n_head).transpose(-3, -2)
            for t in qkv.split(C, dim=-1)
        )

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual after attention output `y` (..., C), then the feed-forward half."""
        x = x + self.dropout(self.proj(y))
        return x + self.dropout(self.ff(self.ln_ff(x)))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv: list | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """x (B, T, C), or its real positions (N, C) with their `packing`; `kv`, when given,
        receives this layer's (keys, values) (B, H, T, C/H) for a cache."""
        q, k, v = self.heads(x, packing)  # (B, H, T, C/H)
        if kv is not None:
            kv.append((k, v))
        y = attention(q, k, v, mask, self.attn_dropout if self.training else 0.0)
        B, H, T, D = y.shape
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.finish(x, y if packing is None else packing.pack(y))

    def decode(self, x: torch.Tensor, cache: DecodeCache, layer: int) -> torch.Tensor:
        """One new position per path: x (B, P, C) attends to its person's prefix and to its own
        earlier decoded positions; its keys and values join the cache."""
        B, P, C = x.shape
        q, k, v = (t.squeeze(-2) for t in self.heads(x.unsqueeze(-2)))  # (B, P, H, C/H)
        cache.suffix[layer].append((k, v))
        scale = (C // self.n_head) ** -0.5
        # Against the prefix: one (P x C/H) @ (C/H x T) product per person and head, the prefix
        # read once for all P paths (never copied per path).
        q_heads = q.transpose(1, 2)  # (B, H, P, C/H)
        prefix_keys, prefix_values = cache.prefix[layer]  # (B, H, T, C/H)
        before = (q_heads @ prefix_keys.transpose(-1, -2)) * scale  # (B, H, P, T)
        before = before.masked_fill(~cache.prefix_mask[:, None, None, :], float("-inf"))
        # Against its own positions, one at a time (they are few; stacking them would copy).
        own = torch.stack([(q * keys).sum(-1) for keys, _ in cache.suffix[layer]], dim=-1)
        own = (own * scale).transpose(1, 2)  # (B, H, P, steps)
        weights = torch.softmax(torch.cat([before, own], dim=-1), dim=-1)
        T = prefix_keys.shape[2]
        y = (weights[..., :T] @ prefix_values).transpose(1, 2)  # (B, P, H, C/H)
        own_weights = weights[..., T:].transpose(1, 2)  # (B, P, H, steps)
        for step, (_, values) in enumerate(cache.suffix[layer]):
            y = y + own_weights[..., step, None] * values
        return self.finish(x, y.reshape(B, P, C))


@dataclass(frozen=True)
class Packing:
    """Where the real positions of a right-padded (B, T) batch lie, so that the work done per
    position (layer norms, projections, feed-forward: nearly all of it) runs on those N rows
    only, and attention, which needs the (B, T) layout, pads and packs around itself.

    Why: token-budget batches are padded to their longest person (12% of positions on average,
    half of them in a batch of short careers), and every padded position cost a real one's
    matrix products; ranks of one update also differ less in time when each computes only its
    own real tokens. Used on CPU, where finding the rows costs nothing; on a GPU it would wait
    for the device (`nonzero`), so the padded layout stays there."""

    index: torch.Tensor  # (N,) flat positions b * T + t of the real rows
    batch: int  # B
    length: int  # T

    @staticmethod
    def of(lengths: torch.Tensor, length: int) -> Packing:
        real = torch.arange(length, device=lengths.device) < lengths[:, None]  # (B, T)
        return Packing(real.flatten().nonzero().squeeze(1), lengths.shape[0], length)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D)."""
        return x.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D), zeros at padded positions."""
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy(0, self.index, x).view(self.batch, self.length, -1)


@dataclass
class DecodeCache:
    """Keys and values for incremental decoding (`Career.start_cache`, `Career.decode_step`).

    Each of the B rows (people) has a *prefix*, run once and right-padded like a loader batch
    (`prefix_lengths` real positions, the rest masked), and P *paths* continuing it, each with its
    own decoded positions (the suffix). Every path of every row advances one position per step, so
    the new position of row b is `prefix_lengths[b] + steps`: its absolute position, which the
    sinusoidal encoding uses. Paths share their row's prefix keys instead of copying them: per step,
    a path costs one position's compute and reads the prefix once per person, not once per path.
    """

    prefix: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, H, T, C/H)
    prefix_lengths: torch.Tensor  # (B,) real prefix positions
    # per layer, per decoded step: keys, values (B, P, H, C/H)
    suffix: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.suffix:
            self.suffix = [[] for _ in self.prefix]

    @property
    def steps(self) -> int:
        """Positions decoded after the prefix."""
        return len(self.suffix[0])

    @property
    def paths(self) -> int | None:
        """Paths per row (None before the first step)."""
        return self.suffix[0][0][0].shape[1] if self.steps else None

    @property
    def prefix_mask(self) -> torch.Tensor:
        """(B, T) True at real prefix positions."""
        T = self.prefix[0][0].shape[2]
        return torch.arange(T, device=self.prefix_lengths.device) < self.prefix_lengths[:, None]

    def fork(self) -> DecodeCache:
        """The same prefixes with no decoded positions (another set of paths from the same start)."""
        return DecodeCache(self.prefix, self.prefix_lengths)

    def reorder(self, index: torch.Tensor) -> None:
        """Make path j of row b continue from path `index[b, j]` (B, P'), as beam search does:
        the sampler merges paths that drew the same history and splits them again. P' may differ
        from P. Before the first step there is nothing to copy."""
        if not self.steps:
            return
        B, P = self.suffix[0][0][0].shape[:2]
        flat = (index + torch.arange(B, device=index.device)[:, None] * P).flatten()

        def pick(t: torch.Tensor) -> torch.Tensor:  # whole rows: faster than a 4-D gather
            return t.flatten(0, 1).index_select(0, flat).view(B, -1, *t.shape[2:])

        self.suffix = [[(pick(k), pick(v)) for k, v in layer] for layer in self.suffix]


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
        self.dropout = hash_dropout.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, config.vocab_sizes["job"])
        self.stay_head = nn.Linear(C, 1) if config.two_stage else None
        self.embed_scale = math.sqrt(C)
        self.apply(self.init_weights)

    # ------------------------------------------------------------------ forward
    def _word_dropout_mask(
        self, inputs: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Causal mask that also hides history positions: random ones in training (word dropout),
        or those `visible` (B, T) marks False, in any mode (rationales: the very mask training
        showed the model, so a subset of the history is seen as it learned to see one)."""
        B, T = inputs.shape
        if visible is not None:
            keep = visible.to(device=inputs.device, dtype=torch.bool).clone()
        elif self.training and self.config.word_dropout > 0:
            keep = torch.rand(B, T, device=inputs.device) >= self.config.word_dropout
        else:
            return None
        keep[:, 0] = True  # <bos> stays visible
        causal = torch.ones(T, T, dtype=torch.bool, device=inputs.device).tril()
        mask = causal[None] & keep[:, None, :]
        mask |= torch.eye(T, dtype=torch.bool, device=inputs.device)[None]  # always see yourself
        return mask[:, None]  # (B, 1, T, T)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Input vectors (..., C) of last year's job and the covariates, before positions."""
        x = self.job_embedding(batch["inputs"]) * self.embed_scale
        for name in self.config.covariates:
            if name in batch:
                x = x + self.covariate_embeddings[name](batch[name])
        return x

    def represent(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden state at each year (B, T, C): a representation of the history up to that year.
        `batch["visible"]` (B, T) bool, when given, hides the history positions it marks False."""
        inputs = batch["inputs"]
        T = inputs.shape[1]
        x = self.embed(batch)
        x = x + sinusoidal_positions(T, self.config.d_model, inputs.device).to(x.dtype)[None]
        mask = self._word_dropout_mask(inputs, batch.get("visible"))
        packing = self._packing(batch)
        if packing is not None:
            x = packing.pack(x)  # (N, C)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, mask, packing=packing)
        x = self.ln_out(x)
        return x if packing is None else packing.pad(x)

    def _packing(self, batch: dict[str, torch.Tensor]) -> Packing | None:
        """The real positions of a CPU training batch that has `lengths` (see `Packing`); else
        None. Inference keeps the padded layout: callers there may read any position."""
        inputs, lengths = batch["inputs"], batch.get("lengths")
        if not self.training or lengths is None or inputs.device.type != "cpu":
            return None
        return Packing.of(lengths.to(inputs.device), inputs.shape[1])

    def outputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Job logits (..., V) and stay logits (...) (None for the one-stage model) of hidden states."""
        stay = self.stay_head(h).squeeze(-1) if self.stay_head is not None else None
        return self.head(h), stay

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Job logits (B, T, V) and stay logits (B, T) (None for the one-stage model)."""
        return self.outputs(self.represent(batch))

    def next_log_probs(self, h: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """log P(job) over all jobs (..., V) from hidden states (..., C) and the inputs (last
        year's jobs) they were computed from: the distribution `log_probs` gives, for decoding."""
        logits, stay = self.outputs(h)
        return self.log_probs_from_logits(logits, stay, inputs)

    # ------------------------------------------------------------------ incremental decoding
    # Inference only (eval mode: no dropout, no word dropout). A prefix runs once; each decoded
    # position then costs one position's compute (see `DecodeCache` for the layout).
    def _check_eval(self) -> None:
        if self.training:
            raise RuntimeError("incremental decoding is for inference: call model.eval() first")

    @torch.no_grad()
    def start_cache(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, DecodeCache]:
        """Run each row's prefix once: `batch` as `represent` takes it (right-padded; `lengths`
        (B,) when given, else the non-pad inputs, count its real positions, at least 1).

        Returns the hidden state at each row's last real position (B, C) and the cache.
        """
        self._check_eval()
        inputs = batch["inputs"]
        lengths = batch.get("lengths")
        lengths = (inputs != PAD_ID).sum(1) if lengths is None else lengths.to(inputs.device)
        if bool((lengths < 1).any()) or bool((lengths > inputs.shape[1]).any()):
            raise ValueError("every prefix needs between 1 and T real positions")
        T = inputs.shape[1]
        x = self.embed(batch)
        x = x + sinusoidal_positions(T, self.config.d_model, inputs.device).to(x.dtype)[None]
        prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block in self.blocks:  # causal: right padding never reaches a real position
            x = block(x, None, prefix)
        last = x[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, C)
        return self.ln_out(last), DecodeCache(prefix, lengths)

    @torch.no_grad()
    def decode_step(
        self, step: dict[str, torch.Tensor], cache: DecodeCache
    ) -> tuple[torch.Tensor, DecodeCache]:
        """One new position for every path: `step` holds "inputs" (B, P) (the job of the year
        before, as in a batch) and covariates (B, P) of the year being predicted, or (B, 1) when
        all paths of a row share them (embedded once, broadcast); the position is
        `cache.prefix_lengths + cache.steps`. Returns hidden states (B, P, C) and the cache,
        updated in place (one more step)."""
        self._check_eval()
        inputs = step["inputs"]
        if inputs.dim() != 2 or inputs.shape[0] != cache.prefix_lengths.shape[0]:
            raise ValueError(f"step inputs must be (B, P) with B = {cache.prefix_lengths.shape[0]}")
        if cache.paths not in (None, inputs.shape[1]):
            raise ValueError(
                f"this cache decodes {cache.paths} paths per row, not {inputs.shape[1]}"
            )
        positions = cache.prefix_lengths + cache.steps  # (B,) absolute
        table = sinusoidal_positions(
            cache.prefix[0][0].shape[2] + cache.steps + 1, self.config.d_model, inputs.device
        )
        x = self.embed(step) + table.to(cache.prefix[0][0].dtype)[positions][:, None]  # (B, P, C)
        for layer, block in enumerate(self.blocks):
            x = block.decode(x, cache, layer)
        return self.ln_out(x), cache

    def non_embedding_parameters(self) -> int:
        """Parameters of the transformer blocks, the final LayerNorm and the stay head: Kaplan et
        al.'s N for scaling laws, which leaves out the vocabulary-sized tables (the job and
        covariate embeddings and the untied job output layer, which a tied model shares with the
        embedding): they grow with the vocabulary, not with the model's depth and width."""
        tables = [self.job_embedding, *self.covariate_embeddings.values(), self.head]
        return self.num_parameters() - sum(p.numel() for t in tables for p in t.parameters())

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
