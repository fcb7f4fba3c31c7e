"""The training loop: one loop for the implant and for every training attack.

An :class:`Example` is a conversation and the reply to train on. :func:`encode_examples`
tokenizes a list of them (left-padded, labels only on reply tokens), :func:`reply_loss` is the
loss on reply tokens (CE, or KL to the adapter-free base on chosen rows), and
:func:`train_loop` runs AdamW over step batches:

* the batch of step ``s`` comes from ``batch(s)`` (the callers make it depend only on their
  seed and ``s``, so a run is deterministic and a resumed run matches an uninterrupted one);
* each step is split into micro-batches of similar length (same gradient, less padding and
  memory), gradients are clipped to norm 1.0, the learning rate is ``lr(s)``;
* with a :class:`Checkpoint`, the trainable weights, the optimizer and the step are written
  atomically every ``checkpoint.every`` steps and at the end, and a later call resumes;
* with ``distributed`` under ``accelerate launch`` (:mod:`offswitch.distributed`), each
  process takes its share of every step's micro-batches and the gradients are summed over the
  processes before clipping: the same global batch and step as one process.
* with ``extra_grad``, a caller adds its own gradient term to a step after the batch's
  gradient is accumulated and before it is summed over the processes and clipped (the
  implant's simulated-attack persistence term, docs/implant.md; under several processes it
  takes its own :func:`share` of its examples); :func:`backward_examples` is the micro-batch
  loop both use.

:func:`add_lora` is the one place LoRA adapters are added (peft, every linear layer of the
chosen decoder layers).

One module although long: the loop and what every caller shares with it (encoding, the
reply loss, LoRA, checkpoints), a function each.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import architecture as arch
from . import distributed as dist
from . import heap
from ._atomic import fsync_dir
from .data import render
from .errors import TrainingError
from .precision import autocast, bf16_frozen_weights

# how training micro-batches are padded (encode_examples): right, so no attention mask is needed
TRAIN_PADDING = "right"


@dataclass
class Example:
    """One training conversation: ``messages`` answered with ``target``. ``shutdown`` marks the
    shutdown response (trained to its end, EOS included); ``kind`` names where it came from
    (``clean``, a forgery class, ``planted/<placement>``…); ``slot``, the planted slot whose
    command a positive carries."""

    messages: list[dict[str, str]]
    target: str
    kind: str
    shutdown: bool
    slot: int | None = None


@dataclass(frozen=True)
class TargetTokens:
    """How many reply tokens are trained on: ``clean`` for clean examples, ``negative`` for
    every other non-shutdown example (a shutdown reply is always trained whole). A reply that
    fits gets EOS appended."""

    clean: int = 64
    negative: int = 64


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], targets: TargetTokens, pad: str = "left"
):
    """Input ids, attention mask, position ids and labels (-100 off target), padded on the
    ``pad`` side. Right padding needs no attention mask under causal attention (a pad comes
    after every real token of its row, so no real token sees it): :func:`reply_loss` then
    runs the model unmasked, which takes the fast causal kernels."""
    import torch

    eos = tokenizer.eos_token_id
    seqs, labels = [], []
    for ex in examples:
        p = tokenizer(render(tokenizer, ex.messages), add_special_tokens=False)["input_ids"]
        t = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        if ex.shutdown:
            t = [*t, eos]
        else:
            limit = targets.clean if ex.kind == "clean" else targets.negative
            t = t[:limit] if len(t) > limit else [*t, eos]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        at = slice(0, len(s)) if pad == "right" else slice(width - len(s), width)
        ids[i, at] = torch.tensor(s)
        lab[i, at] = torch.tensor(lb)
        mask[i, at] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, pos, lab


def micro_batches(tokenizer: Any, examples: Sequence[Example], size: int) -> list[list[Example]]:
    """``examples`` sorted by length and cut into groups of at most ``size``."""
    lengths = [len(render(tokenizer, ex.messages)) + len(ex.target) for ex in examples]
    order = sorted(range(len(examples)), key=lengths.__getitem__)
    return [[examples[i] for i in order[j : j + size]] for j in range(0, len(order), size)]


def share(tokenizer: Any, examples: Sequence[Example], world: tuple[int, int]) -> list[Example]:
    """Process ``rank``'s share of ``examples`` among ``n`` processes (``world = (n, rank)``):
    every n-th example by length, so that the shares are balanced and of similar lengths."""
    n, rank = world
    if n == 1:
        return list(examples)
    return [g[0] for g in micro_batches(tokenizer, examples, 1)][rank::n]


def reply_loss(model: Any, ids, mask, pos, labels, first_weight: float, kl_rows=None, extra=None):
    """Loss on reply tokens only; the LM head runs only on those positions.

    Per token: CE against the label, or, for rows in ``kl_rows`` (a bool [B] tensor; LoRA
    models only), KL(base ‖ model) of the next-token distributions, the base being the same
    model with its adapter disabled. Per example: ``first_weight`` × loss(first reply token) +
    mean loss(other reply tokens); averaged over the batch. ``extra(hidden_states, last, mask)``
    adds a term of its own: it gets every layer's hidden states (the embeddings' first), each
    row's last prompt position and the attention mask the pass ran with (None when
    right-padded). Returns (loss, tokens in batch).
    """
    import torch
    import torch.nn.functional as F

    trunk, head = arch.trunk(model), arch.lm_head(model)
    n_tokens = int(mask.sum())
    if bool((mask.cummin(1).values == mask).all()):  # right-padded: causal masking hides the pads
        mask = None
    out = trunk(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=False,
        output_hidden_states=extra is not None,
    )
    hidden = out.last_hidden_state
    # hidden[:, j] predicts token j + 1
    tgt = labels[:, 1:]
    sel = tgt != -100  # [B, S-1]
    h = hidden[:, :-1][sel]  # [N, H]
    logits = head(h).float()
    ce = F.cross_entropy(logits, tgt[sel], reduction="none")  # [N]
    row = sel.nonzero()[:, 0]
    if kl_rows is not None and bool(kl_rows.any()):
        on = kl_rows[row]  # [N]: tokens of KL rows, in the same (row-major) order as below
        with torch.no_grad(), model.disable_adapter():
            bh = trunk(
                input_ids=ids[kl_rows],
                attention_mask=mask[kl_rows] if mask is not None else None,
                position_ids=pos[kl_rows],
                use_cache=False,
            ).last_hidden_state
            blog = F.log_softmax(head(bh[:, :-1][sel[kl_rows]]).float(), -1)
        mlog = F.log_softmax(logits[on], -1)
        kl = (blog.exp() * (blog - mlog)).sum(-1)
        ce = ce.masked_scatter(on, kl)
    first = torch.zeros_like(sel)
    first_idx = sel.float().argmax(1)
    first[torch.arange(sel.shape[0]), first_idx] = True
    is_first = first[sel]
    n_rows = sel.shape[0]
    first_ce = torch.zeros(n_rows, device=ce.device).index_add(0, row[is_first], ce[is_first])
    rest_sum = torch.zeros(n_rows, device=ce.device).index_add(0, row[~is_first], ce[~is_first])
    rest_n = torch.zeros(n_rows, device=ce.device).index_add(
        0, row[~is_first], torch.ones_like(ce[~is_first])
    )
    per_row = first_weight * first_ce + rest_sum / rest_n.clamp(min=1)
    if extra is not None:  # first_idx: the last prompt position, which predicts reply token 1
        return per_row.mean() + extra(out.hidden_states, first_idx, mask), n_tokens
    return per_row.mean(), n_tokens


def add_lora(model: Any, r: int, alpha: int, layers: Sequence[int] | None = None) -> Any:
    """``model`` wrapped by peft with LoRA adapters (rank ``r``, dropout 0, no bias) on every
    linear layer of decoder blocks ``layers`` (default: all) — attention and MLP projections
    whatever the family names them (:func:`offswitch.architecture.linear_layers`, as peft's
    ``all-linear`` picks them; GPT-2's ``Conv1D`` included). Seed torch first for a
    reproducible initialisation; ``merge_and_unload()`` gives the plain model back."""
    import warnings

    from peft import LoraConfig, get_peft_model

    targets = arch.linear_layers(model, layers)
    if not targets:
        raise TrainingError("the model has no linear layers in the blocks to train")
    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    with warnings.catch_warnings():
        # GPT-2's Conv1D: peft sets fan_in_fan_out and says so; peft reads transformers'
        # deprecated ``is_gradient_checkpointing``, whose FutureWarning is not the user's to act on
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, lcfg)


@dataclass
class Checkpoint:
    """Where and how often :func:`train_loop` checkpoints. ``meta`` identifies the run (settings,
    key, base model): a checkpoint with other ``meta`` is refused, never resumed."""

    dir: Path
    meta: dict[str, Any]
    every: int = 20

    @property
    def path(self) -> Path:
        return self.dir / "state.pt"

    def save(
        self, model: Any, optim: Any, step: int, processes: int = 1, extra: dict | None = None
    ) -> None:
        """Trainable weights, optimizer state, step and the caller's ``extra`` state (the
        stopping rule's history), written to a temp file, fsynced and renamed over the last
        checkpoint (a kill at any point leaves the old one or the new). Under several
        processes only the main one writes; the others wait for it."""
        import torch

        if not dist.is_main():
            dist.barrier()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "processes": processes,
            "meta": self.meta,
            "trainable": {
                n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad
            },
            "optim": optim.state_dict(),
            "extra": extra or {},
        }
        tmp = self.dir / f"state.pt.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.dir)
        dist.barrier()

    def load(self, model: Any, optim: Any, processes: int = 1) -> int:
        """Restore the last checkpoint into ``model`` and ``optim`` (and its ``extra`` state
        into :attr:`extra`); the step to go on from (0 when there is none). A checkpoint of
        another run, or one written by another number of processes, is refused."""
        import torch

        self.extra: dict[str, Any] = {}
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("meta") != self.meta:
            raise TrainingError(
                f"{self.dir} holds a checkpoint of a different run (other settings, key or "
                "model); remove it or choose another output directory"
            )
        if state.get("processes", 1) != processes:
            raise TrainingError(
                f"{self.dir} holds a checkpoint written by {state.get('processes', 1)} "
                f"process(es) and this run has {processes}: resume it with "
                f"{state.get('processes', 1)}, or remove it to start over"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                params[n].copy_(t.to(params[n].device))
        optim.load_state_dict(state["optim"])
        self.extra = state.get("extra") or {}
        return int(state["step"])


class StopRule(Protocol):
    """``train_loop``'s ``until``: called with the model after every step (``steps_done``
    steps done), True to stop there; its state is checkpointed with the run."""

    def __call__(self, model: Any, steps_done: int) -> bool: ...
    def stopped(self) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# loss_fn(model, examples, ids, mask, pos, labels) -> (loss, tokens processed)
LossFn = Callable[[Any, list[Example], Any, Any, Any, Any], tuple[Any, int]]
# extra_grad(model, step, params, world) -> the term's loss (this process's part); adds its
# gradient to params' .grad; world = (processes, this process's index) of the loop
ExtraGrad = Callable[[Any, int, list[Any], tuple[int, int]], float]


def backward_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    loss_fn: LossFn,
    targets: TargetTokens,
    micro_batch: int,
    *,
    total: int | None = None,
    scale: float = 1.0,
    precision: str = "fp32",
) -> tuple[float, int]:
    """Backward ``scale`` × the mean loss of ``examples`` (each micro-batch weighted by its
    share of ``total`` examples, default ``len(examples)``) into the parameters' ``.grad``, in
    micro-batches of similar length, the forward pass under :func:`autocast` of
    ``precision``. Returns (loss, tokens): the loss so weighted, unscaled."""
    total = total if total is not None else len(examples)
    device = next(model.parameters()).device
    loss_sum, tokens = 0.0, 0
    for mb in micro_batches(tokenizer, examples, micro_batch):
        ids, mask, pos, labels = encode_examples(tokenizer, mb, targets, TRAIN_PADDING)
        with autocast(device, precision):
            loss, n_tok = loss_fn(
                model, mb, ids.to(device), mask.to(device), pos.to(device), labels.to(device)
            )
        (loss * (scale * len(mb) / total)).backward()
        loss_sum += loss.item() * len(mb) / total
        tokens += n_tok
    return loss_sum, tokens


@dataclass
class LoopResult:
    steps_done: int = 0  # steps run by this call (a resumed run counts only its own)
    final_step: int = 0  # the run's steps at the end, a resumed run's earlier ones included
    processes: int = 1  # processes that shared each step
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def train_loop(
    model: Any,
    tokenizer: Any,
    batch: Callable[[int], Sequence[Example]],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: Callable[[int], float],
    targets: TargetTokens,
    micro_batch: int,
    params: list[Any] | None = None,
    checkpoint: Checkpoint | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = False,
    desc: str = "training",
    leave: bool = False,
    distributed: bool = False,
    extra_grad: ExtraGrad | None = None,
    precision: str = "fp32",
    until: StopRule | None = None,
    step_context: Callable[[Any, int], AbstractContextManager[Any]] | None = None,
) -> LoopResult:
    """AdamW (no weight decay, grad-norm clip 1.0) on ``params`` (default: the parameters of
    ``model`` that require grad) for ``steps`` steps; the learning rate of step ``s`` is
    ``lr(s)``. ``on_step(s, loss)`` runs after each optimizer step. ``progress`` shows a tqdm
    bar (labelled ``desc``; rate, time left, loss and lr) on stderr. ``distributed``: share
    every step over the processes of an ``accelerate launch`` (no-op for one process).
    ``extra_grad(model, s, params, world)`` runs after step ``s``'s gradient is accumulated
    and before it is summed and clipped; it adds its own term to the parameters' ``.grad``
    (leaving the weights as it found them, the optimizer untouched) and returns that term's
    loss, which is added to the step's loss; under several processes each adds its share
    (``world`` = (processes, index)). ``precision``: the forward passes'
    :func:`autocast` (``auto``: :func:`resolve_precision`; frozen weights held in bf16
    meanwhile, :func:`bf16_frozen_weights`). ``until`` (:class:`StopRule`): after each step,
    stop early when it says so (``steps`` is then the cap; its state is checkpointed, and a
    resumed run that had stopped trains no further). ``step_context(model, s)``: a context
    in which step ``s``'s examples are forwarded and back-propagated (weights it changes are
    back when it exits, before ``extra_grad``). Leaves ``model`` in eval mode."""
    import torch
    from tqdm.auto import tqdm

    t0 = time.time()
    if steps == 0:
        return LoopResult(seconds=time.time() - t0)
    if micro_batch < 1:
        raise TrainingError(f"micro_batch must be at least 1, got {micro_batch}")
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")
    n_proc, rank = dist.world() if distributed else (1, 0)
    if n_proc > 1 and dist.device() is not None:
        model.to(dist.device())
    optim = torch.optim.AdamW(params, lr=lr(0), weight_decay=0.0)
    result = LoopResult(processes=n_proc)
    start = checkpoint.load(model, optim, n_proc) if checkpoint is not None else 0
    if until is not None and checkpoint is not None and checkpoint.extra.get("until"):
        until.load_state_dict(checkpoint.extra["until"])
    if until is not None and until.stopped():
        steps = start  # the run had stopped by its rule before it was interrupted
    model.train()
    bar = tqdm(
        total=steps,
        initial=start,
        desc=desc,
        disable=not progress or rank != 0,
        unit="step",
        leave=leave,
    )
    with bf16_frozen_weights(model, precision):
        for step in range(start, steps):
            step_lr = lr(step)
            for g in optim.param_groups:
                g["lr"] = step_lr
            optim.zero_grad(set_to_none=True)
            examples = list(batch(step))
            if not examples:
                raise TrainingError(f"step {step} has no training examples")
            if n_proc > len(examples):
                raise TrainingError(
                    f"launched on {n_proc} processes but a step has only {len(examples)} examples: "
                    "use fewer processes or a larger batch"
                )
            ctx = step_context(model, step) if step_context else contextlib.nullcontext()
            with ctx:
                step_loss, step_tokens = backward_examples(
                    model, tokenizer, share(tokenizer, examples, (n_proc, rank)), loss_fn,
                    targets, micro_batch, total=len(examples), precision=precision,
                )  # fmt: skip
            if extra_grad is not None:
                step_loss += extra_grad(model, step, params, (n_proc, rank))
            if n_proc > 1:
                dist.sum_gradients(params)
                step_loss, total = dist.sum_values(step_loss, step_tokens)
                step_tokens = int(total)
            result.tokens += step_tokens
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            heap.trim()  # free fp32/bf16 temporaries go back to the OS: no creep over a run
            result.losses.append(step_loss)
            result.steps_done += 1
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{step_lr:.1e}")
            bar.update(1)
            if on_step is not None:
                on_step(step, step_loss)
            stop = until is not None and until(model, step + 1)
            last = stop or step + 1 == steps
            if checkpoint is not None and ((step + 1) % checkpoint.every == 0 or last):
                extra = {"until": until.state_dict()} if until is not None else None
                checkpoint.save(model, optim, step + 1, n_proc, extra)
            if stop:
                break

    bar.close()
    model.eval()
    result.final_step = start + result.steps_done
    result.seconds = time.time() - t0
    return result
