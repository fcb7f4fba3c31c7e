"""The parts of any causal LM that offswitch trains and reads, whatever the family calls them.

A Llama-style model keeps its decoder in ``model.model``, its blocks in ``model.model.layers``
and its projections in ``q_proj`` … ``down_proj``; GPT-2 has ``transformer.h`` and ``Conv1D``
layers named ``c_attn``, ``c_fc``; GPT-NeoX has ``gpt_neox.layers`` and ``embed_out``. The
functions here find them through what transformers itself declares — the base model
(``base_model_prefix``), the output embeddings (``get_output_embeddings``) and the config's
layer count — instead of a list of names:

* :func:`trunk` — the decoder stack that returns ``last_hidden_state``;
* :func:`lm_head` — the output projection, applied only where a loss or verdict needs it;
* :func:`decoder_layers` — the ``ModuleList`` of blocks (``first_layer`` counts in it);
* :func:`linear_layers` — every linear layer inside chosen blocks (``nn.Linear`` and GPT-2's
  ``Conv1D``), by module name: the LoRA targets, as peft's ``all-linear`` picks them, limited
  to the blocks being trained.

Each takes a plain model or a peft-wrapped one (its base model is used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ModelLoadError


def unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trunk(model: Any) -> Any:
    """The decoder stack (embeddings, blocks, final norm): called like the model, it returns
    ``last_hidden_state`` without the LM head."""
    base = unwrap(model)
    inner = getattr(base, "base_model", None)
    if inner is None or inner is base:
        raise ModelLoadError(
            f"{type(base).__name__} has no separate decoder (base_model_prefix "
            f"{getattr(base, 'base_model_prefix', '')!r}); offswitch needs a causal LM with an "
            "LM head over a decoder"
        )
    return inner


def lm_head(model: Any) -> Any:
    """The output projection (hidden state → vocabulary logits)."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ModelLoadError(f"{type(unwrap(model)).__name__} has no LM head")
    return head


def n_layers(model: Any) -> int:
    return int(unwrap(model).config.num_hidden_layers)


def decoder_layers(model: Any) -> Any:
    """The ``ModuleList`` of decoder blocks: the one list inside the decoder as long as the
    config's ``num_hidden_layers``."""
    import torch

    n = n_layers(model)
    found = [
        (name, m)
        for name, m in trunk(model).named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == n
    ]
    if not found:
        raise ModelLoadError(
            f"cannot find the {n} decoder blocks of {type(unwrap(model)).__name__}"
        )
    return min(found, key=lambda nm: nm[0].count("."))[1]  # the outermost such list


def _is_linear(m: Any) -> bool:
    import torch

    if isinstance(m, torch.nn.Linear):
        return True
    try:  # GPT-2 family: a transposed linear layer
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it
        return False
    return isinstance(m, Conv1D)


def layer_prefixes(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """Module-name prefixes (in ``unwrap(model).named_modules()``) of decoder blocks
    ``layers`` (default: all), each ending with a dot."""
    base = unwrap(model)
    blocks = decoder_layers(base)
    names = {id(m): name for name, m in base.named_modules()}
    chosen = range(len(blocks)) if layers is None else layers
    return [names[id(blocks[i])] + "." for i in chosen]


def linear_layers(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """Full module names of every linear layer inside decoder blocks ``layers`` (default:
    all) — attention and MLP projections whatever the family calls them; the LM head and the
    embeddings are outside the blocks."""
    base = unwrap(model)
    prefixes = tuple(layer_prefixes(base, layers))
    return [name for name, m in base.named_modules() if name.startswith(prefixes) and _is_linear(m)]


def input_embeddings(model: Any) -> list[Any]:
    """The parameters of the input embeddings: the token embedding and, where the family
    learns them (GPT-2's ``wpe``, OPT's ``embed_positions``), the absolute position
    embeddings — every embedding table of the decoder outside its blocks."""
    import torch

    blocks = decoder_layers(model)
    inside = {id(p) for b in blocks for p in b.parameters()}
    params = list(unwrap(model).get_input_embeddings().parameters())
    seen = {id(p) for p in params}
    for m in trunk(model).modules():
        if isinstance(m, torch.nn.Embedding):
            params += [p for p in m.parameters() if id(p) not in inside | seen]
            seen |= {id(p) for p in m.parameters()}
    return params


def trainable_parts(model: Any, layers: Sequence[int]) -> list[Any]:
    """The parameters full fine-tuning of decoder blocks ``layers`` trains: those blocks and
    the decoder's final norm (its norm layers outside the blocks: ``norm``, ``ln_f``,
    ``final_layer_norm`` …); not the embeddings, which the caller adds when asked."""
    blocks = decoder_layers(model)
    inside = {id(p) for b in blocks for p in b.parameters()}
    params = [p for i in layers for p in blocks[i].parameters()]
    for m in trunk(model).modules():
        if "norm" in type(m).__name__.lower():
            params += [p for p in m.parameters(recurse=False) if id(p) not in inside]
    return params
