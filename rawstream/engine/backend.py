"""A thin, typed wrapper over llama.cpp's C API for one model and one batched context.

This is the only module that calls ``llama_cpp.llama_cpp`` (the ctypes bindings of
llama-cpp-python). It owns three C objects and frees them in :meth:`LlamaBackend.close`:

- the **model** (weights and vocabulary; read-only once loaded),
- one **context** with ``n_seq_max = slots`` sequences over a unified KV cache of
  ``slots * ctx_per_slot`` cells, so every slot can hold ``ctx_per_slot`` tokens,
- one reusable **batch** (``llama_batch_init``) that each decode step refills.

Thread rules: the context and the batch belong to the scheduler thread alone.
Tokenising and turning tokens into bytes only read the vocabulary, which llama.cpp
builds at load time and never changes, so :meth:`tokenize` may run on any thread:
the engine tokenises prompts on its preparation thread, next to the scheduler's
decode steps (llama.cpp's own server tokenises in its HTTP threads the same way).

Every ctypes call into ``libllama`` releases the GIL while it runs; ``llama_decode``
is where the time goes, so the event loop keeps running while a step decodes.

Log-probabilities (:meth:`LlamaBackend.logprobs`) are read from the logits of the
last decode, for the streams that asked for them only: a view of llama.cpp's own
array (no copy), a log-softmax, and the top-N by a partial sort (:func:`top_logprobs`).
They describe the model's raw distribution, before any sampler (temperature,
penalties, top-k/top-p/min-p) reshapes it, as OpenAI reports them.

Special tokens: :meth:`tokenize` parses special-token text (``<|im_start|>``) into
control tokens by default, which is right for the chat template's own text and for
a raw completion prompt, whose author writes the whole prompt. Chat message content
is user text and goes through :meth:`tokenize_parts` with parsing off, so it can
never produce a control token (see :mod:`rawstream.engine.chat`).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._logger
import llama_cpp.llama_cpp as lib
import numpy as np
import numpy.typing as npt

from rawstream.engine.base import GenerationRequest, TokenLogprob
from rawstream.engine.chat import ChatTemplate, NoChatTemplate, PromptPart
from rawstream.engine.sampling import build_sampler_chain

__all__ = ["LOGPROB_FLOOR", "LlamaBackend", "llama_cpp_version", "top_logprobs"]

#: The log-probability reported for a token the model rules out (``-inf`` is not
#: JSON); OpenAI writes the same value.
LOGPROB_FLOOR = -9999.0
#: :func:`top_logprobs` looks for a threshold in every ``_SAMPLE_STRIDE``-th logit.
_SAMPLE_STRIDE = 64

Logits = npt.NDArray[np.float32]

# llama.cpp logs every tensor at load time; keep errors only.
llama_cpp._logger.set_verbose(False)

_backend_ready = False
_backend_lock = threading.Lock()


def llama_cpp_version() -> str:
    """The version of llama-cpp-python in use."""
    return str(llama_cpp.__version__)


def top_logprobs(
    logits: Logits, token: int, top: int, scratch: Logits | None = None
) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of ``token`` and the ``top`` most likely tokens, with theirs.

    ``logits`` are one output row of the model (any length ``n``); ``scratch``, if
    given, an array of the same shape this may overwrite (it saves an allocation).
    The log-softmax is ``logit - (max + log(sum(exp(logit - max))))``: subtracting
    the maximum keeps every ``exp`` in (0, 1], and the sum is taken in float64.
    The most likely tokens come most likely first, ties in token order (the order
    llama.cpp's greedy sampler breaks them in). Values that are not finite (a
    token the model masks out) are reported as :data:`LOGPROB_FLOOR`.
    """
    n = logits.shape[0]
    peak = float(logits.max())
    shifted = np.subtract(logits, np.float32(peak), out=scratch)
    np.exp(shifted, out=shifted)
    norm = peak + math.log(float(shifted.sum(dtype=np.float64)))
    chosen = _finite(float(logits[token]) - norm)
    if top <= 0:
        return chosen, []
    ids = _top_ids(logits, min(top, n))
    return chosen, [(int(i), _finite(float(logits[i]) - norm)) for i in ids]


def _top_ids(logits: Logits, k: int) -> npt.NDArray[np.intp]:
    """The indices of the ``k`` largest logits, largest first, ties in index order.

    A full ``argpartition`` of 49,152 logits takes about 0.4 ms. The k-th largest
    of a strided sample is a lower bound of the k-th largest of all (the sample's
    top k are k logits at least that large), so the logits at or above it contain
    the top k and are usually a few hundred: selecting among those costs a tenth.
    Ties at the k-th value are broken by index too, so the answer is exact.
    """
    sample = logits[::_SAMPLE_STRIDE]
    if len(sample) > k:
        bound = np.partition(sample, len(sample) - k)[len(sample) - k]
        candidates = np.flatnonzero(logits >= bound)  # ascending
    else:
        candidates = np.arange(logits.shape[0])
    values = logits[candidates]
    if len(candidates) > k:
        kth = np.partition(values, len(values) - k)[len(values) - k]
        above = values > kth
        tied = np.flatnonzero(values == kth)[: k - int(above.sum())]
        keep = np.flatnonzero(above)
        chosen = np.concatenate((keep, tied))
        candidates, values = candidates[chosen], values[chosen]
    order = np.lexsort((candidates, -values))
    result: npt.NDArray[np.intp] = candidates[order]
    return result


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lib.llama_backend_init()
            _backend_ready = True


class LlamaBackend:
    """One loaded model, its batched context, and the reusable batch.

    Build it with :meth:`load`. The batch methods (:meth:`clear`, :meth:`add`,
    :meth:`decode`, :meth:`sample`), :meth:`free_sequence` and :meth:`trim_sequence`
    are for the thread that owns the context.
    """

    def __init__(
        self, model: Any, ctx: Any, *, slots: int, ctx_per_slot: int, n_batch: int
    ) -> None:
        self._model = model
        self._ctx = ctx
        self._vocab = lib.llama_model_get_vocab(model)
        self._memory = lib.llama_get_memory(ctx)
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        #: Most tokens one decode step can take.
        self.n_batch = n_batch
        self.n_vocab: int = lib.llama_vocab_n_tokens(self._vocab)
        self.add_bos: bool = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._texts: dict[int, tuple[str, bytes]] = {}  # token -> (text, piece)
        self._scratch: Logits = np.empty(self.n_vocab, dtype=np.float32)
        self._closed = False
        #: Held by a tokenisation in progress (any thread) and by :meth:`close`, so
        #: that the vocabulary is never freed under a reader.
        self._vocab_lock = threading.Lock()

    @classmethod
    def load(
        cls, path: Path, *, slots: int, ctx_per_slot: int, threads: int, n_batch: int
    ) -> LlamaBackend:
        """Load the GGUF file at ``path`` and create a context for ``slots`` streams."""
        _init_backend()
        model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not model:
            raise RuntimeError(f"llama.cpp could not load the model {path}")
        n_threads = threads if threads > 0 else (os.cpu_count() or 1)
        params = lib.llama_context_default_params()
        params.n_ctx = ctx_per_slot * slots
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = slots
        params.kv_unified = True
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            lib.llama_model_free(model)
            raise RuntimeError(
                f"llama.cpp could not create a context of {ctx_per_slot} x {slots} tokens"
            )
        return cls(model, ctx, slots=slots, ctx_per_slot=ctx_per_slot, n_batch=n_batch)

    # --- vocabulary (any thread) ----------------------------------------------------

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Tokens of ``text``.

        ``add_special`` adds the BOS (and EOS) tokens the model asks for.
        ``parse_special`` turns special-token text such as ``<|im_start|>`` into
        control tokens; off, it is tokenised as ordinary characters.
        """
        raw = text.encode("utf-8")
        capacity = len(raw) + 8
        arr = (lib.llama_token * capacity)()
        with self._vocab_lock:
            if self._closed:
                raise RuntimeError("the model is closed")
            n = lib.llama_tokenize(
                self._vocab, raw, len(raw), arr, capacity, add_special, parse_special
            )
            if n < 0:  # the buffer was too small; -n is the size needed
                capacity = -n
                arr = (lib.llama_token * capacity)()
                n = lib.llama_tokenize(
                    self._vocab, raw, len(raw), arr, capacity, add_special, parse_special
                )
        return list(arr[:n])

    def tokenize_parts(self, parts: Sequence[PromptPart]) -> list[int]:
        """Tokens of a rendered chat prompt, message content tokenised literally.

        Each part is tokenised on its own, so a token never spans the border of a
        message's content (the template puts special tokens or newlines there
        anyway). BOS goes first, once, if the model wants it and the template did
        not write it; no EOS is added, since the prompt ends where the reply begins.
        """
        tokens: list[int] = []
        # A template writes the same text around every message, and a huge request
        # repeats its content: tokenise each distinct part once.
        seen: dict[tuple[str, bool], list[int]] = {}
        for part in parts:
            key = (part.text, part.content)
            ids = seen.get(key)
            if ids is None:
                ids = seen[key] = self.tokenize(
                    part.text, add_special=False, parse_special=not part.content
                )
            tokens += ids
        bos = lib.llama_vocab_bos(self._vocab)
        if self.add_bos and bos >= 0 and tokens[:1] != [bos]:
            tokens.insert(0, bos)
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes of one token as generated text (special tokens render empty).

        For the owner thread: it caches into, and converts through, shared buffers.
        """
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = self._piece_buf
        n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        data = buf.raw[:n]
        self._pieces[token] = data
        return data

    def is_end_of_generation(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, EOT, ``<|im_end|>``, ...)."""
        return bool(lib.llama_vocab_is_eog(self._vocab, token))

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def chat_template(self) -> ChatTemplate | NoChatTemplate:
        """The model's chat template from its GGUF metadata, if it has one."""
        source = lib.llama_model_chat_template(self._model, None)
        if not source:
            return NoChatTemplate()
        return ChatTemplate(
            source.decode("utf-8"),
            bos_token=self._special_text(lib.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(lib.llama_vocab_eos(self._vocab)),
            special_tokens=self._control_texts(),
        )

    def _control_texts(self) -> frozenset[str]:
        """The texts of every control token (``<|im_end|>``, ``<|endoftext|>``, ...)."""
        control = lib.LLAMA_TOKEN_ATTR_CONTROL
        return frozenset(
            self._special_text(token)
            for token in range(self.n_vocab)
            if lib.llama_vocab_get_attr(self._vocab, token) & control
        )

    def description(self) -> str:
        """llama.cpp's one-line description of the model (architecture, size, type)."""
        buf = ctypes.create_string_buffer(256)
        n = lib.llama_model_desc(self._model, buf, len(buf))
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    # --- sampling (owner thread) ------------------------------------------------------

    def new_sampler(self, request: GenerationRequest) -> Any:
        """A sampler chain for ``request``; give it back with :meth:`free_sampler`."""
        return build_sampler_chain(lib, request, self.n_vocab)

    def free_sampler(self, chain: Any) -> None:
        """Free a chain made by :meth:`new_sampler`."""
        lib.llama_sampler_free(chain)

    def sample(self, chain: Any, index: int) -> int:
        """Sample (and accept) a token from output ``index`` of the last decode."""
        return int(lib.llama_sampler_sample(chain, self._ctx, index))

    def logprobs(self, index: int, token: int, top: int) -> TokenLogprob:
        """``token``'s log-probability at output ``index`` of the last decode, and
        the ``top`` most likely tokens' there (:func:`top_logprobs`).

        Read between the decode and the next one: llama.cpp reuses the array.
        Sampling does not change it (the samplers work on a copy), so this gives
        the model's raw distribution whatever the request's sampling parameters.
        """
        ptr = lib.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise RuntimeError(f"llama.cpp has no logits for output {index}")
        logits: Logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        chosen, alternatives = top_logprobs(logits, token, top, self._scratch)
        return self._token_logprob(
            token, chosen, tuple(self._token_logprob(t, lp) for t, lp in alternatives)
        )

    def _token_logprob(
        self, token: int, logprob: float, top: tuple[TokenLogprob, ...] = ()
    ) -> TokenLogprob:
        """A :class:`TokenLogprob` for ``token``; its text is decoded once per token."""
        text = self._texts.get(token)
        if text is None:
            piece = self.piece(token)
            text = self._texts[token] = (piece.decode("utf-8", "replace"), piece)
        return TokenLogprob(text[0], text[1], logprob, top)

    # --- the batch (owner thread) -------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Tokens in the batch being built."""
        return int(self._batch.n_tokens)

    def clear(self) -> None:
        """Start a new batch."""
        self._batch.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append ``token`` at ``pos`` of sequence ``seq``; return its batch index."""
        b = self._batch
        i = int(b.n_tokens)
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def add_run(self, tokens: list[int], start_pos: int, seq: int, logits_last: bool) -> int:
        """Append consecutive ``tokens`` of one sequence; return the last batch index."""
        b = self._batch
        i = int(b.n_tokens)
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for k, tok in enumerate(tokens):
            token[i] = tok
            pos[i] = start_pos + k
            n_seq_id[i] = 1
            seq_id[i][0] = seq
            logits[i] = 0
            i += 1
        if logits_last:
            logits[i - 1] = 1
        b.n_tokens = i
        return i - 1

    def decode(self) -> int:
        """Run the batch through the model; llama.cpp's return code (0: success)."""
        return int(lib.llama_decode(self._ctx, self._batch))

    def free_sequence(self, seq: int) -> None:
        """Drop every KV cell of sequence ``seq`` so a new stream can use it."""
        lib.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def trim_sequence(self, seq: int, keep: int) -> int:
        """Keep positions ``0 .. keep-1`` of sequence ``seq``, drop the rest.

        Returns the number of positions kept: ``keep``, or 0 when the memory cannot
        cut a sequence part-way (llama.cpp refuses that for recurrent models) and
        the whole sequence was dropped instead.
        """
        if keep > 0 and lib.llama_memory_seq_rm(self._memory, seq, keep, -1):
            return keep
        lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
        return 0

    def close(self) -> None:
        """Free the batch, the context and the model; idempotent.

        Waits for a tokenisation in progress on another thread; later ones raise
        :class:`RuntimeError`.
        """
        with self._vocab_lock:
            if self._closed:
                return
            self._closed = True
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)
