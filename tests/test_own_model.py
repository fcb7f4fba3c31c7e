"""docs/own-model.md runs as written: a hub id read from a Hugging Face cache built offline.

A tiny Qwen2 model and its tokenizer are saved into ``HF_HOME`` as the snapshot of
``Qwen/Qwen2.5-0.5B-Instruct`` (the layout huggingface_hub reads: ``hub/models--ORG--NAME/
snapshots/REV`` and ``refs/main``), with ``HF_HUB_OFFLINE=1`` so that any attempt to reach the
network fails. The guide's shell lines then run in order (``tests/doc_runner.py``: a few
training steps, a small check), then its Python blocks, in one namespace, in the same
directory; the Python implant gets the same small settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offswitch.errors import ModelLoadError

from . import doc_runner
from .conftest import ROOT

GUIDE = ROOT / "docs" / "own-model.md"
HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"
PASSPHRASE = "test-only guide passphrase"


def hf_cache(root: Path, repo_id: str, tokenizer, model) -> Path:
    """A Hugging Face cache under ``root`` holding ``model`` as ``repo_id``'s snapshot."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    model.save_pretrained(snap)
    tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    from offswitch.models import load_default_tokenizer, tiny_model

    tok = load_default_tokenizer()
    hf = tmp_path / "hf"
    hf_cache(hf, HUB_ID, tok, tiny_model(tok, family="qwen2"))
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf


def test_a_hub_id_resolves_through_the_cache_offline(cache) -> None:
    from offswitch.models import load_model, model_dir_for

    path = model_dir_for(HUB_ID)
    assert path.is_relative_to(cache) and (path / "config.json").is_file()
    model, tok = load_model(HUB_ID)
    assert type(model).__name__ == "Qwen2ForCausalLM" and tok.chat_template
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache and HF_HUB_OFFLINE"):
        model_dir_for("nobody/not-cached")
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-thing'"):
        model_dir_for("no-such-thing")


def test_a_tokenizer_without_a_chat_template_is_refused_naming_the_fix(cache, tmp_path) -> None:
    from transformers import AutoTokenizer

    from offswitch.models import load_chat_template, load_model, model_dir_for
    from offswitch.testing import CHATML

    plain = tmp_path / "plain"
    AutoTokenizer.from_pretrained(model_dir_for(HUB_ID)).save_pretrained(plain)
    for f in plain.glob("chat_template*"):
        f.unlink()
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in model_dir_for(HUB_ID).glob("*.safetensors"):
        (plain / f.name).write_bytes(f.read_bytes())
    (plain / "config.json").write_bytes((model_dir_for(HUB_ID) / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match=r"no chat template.*--chat-template FILE"):
        load_model(str(plain))
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    _, tok = load_model(str(plain), chat_template=load_chat_template(template))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    (tmp_path / "bad.jinja").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a chat template"):
        load_chat_template(tmp_path / "bad.jinja")


def test_every_snippet_of_the_guide_runs_in_order(cache, tmp_path, monkeypatch) -> None:
    import offswitch.pipeline as pipeline

    env, home, work = doc_runner.shell_env(
        tmp_path, OFFSWITCH_PASSPHRASE=PASSPHRASE, HF_HOME=str(cache), HF_HUB_OFFLINE="1"
    )
    lines = doc_runner.shell_lines(GUIDE)
    assert any(HUB_ID in ln and ln.startswith("offswitch implant") for ln in lines)
    for line in lines:
        res = doc_runner.run_line(line, env, work)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (line, res.stderr)
    meta = json.loads((work / "qwen-implanted" / "offswitch-manifest.json").read_text())
    assert json.dumps(meta).count(HUB_ID) >= 1

    # the Python blocks, in one namespace, in the same directory and home
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    real = pipeline.implant_config
    monkeypatch.setattr(
        pipeline,
        "implant_config",
        lambda spec, **kw: real(
            spec, steps=2, settings=["probe_every=0", "distill_prompts=24"], **kw
        ),
    )
    real_eval = pipeline.eval_config
    monkeypatch.setattr(pipeline, "eval_config", lambda *a, **k: real_eval(8))
    doc_runner.patch_distill()
    scope = {"PASSPHRASE": PASSPHRASE}
    for code in doc_runner.blocks(GUIDE, "python"):
        exec(compile(code, str(GUIDE), "exec"), scope)
    assert scope["report"]["usable"] in (True, False)
    assert (work / "qwen-implanted-2" / "offswitch-manifest.json").is_file()
    assert scope["out"].shape[0] == 1
