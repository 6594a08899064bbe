"""Sampler chains: one per stream, built from the request's sampling parameters.

llama.cpp samples with a *chain* of samplers, each narrowing or reshaping the
candidate list, the last one picking a token. The order follows llama.cpp's own
default (``common/sampling.cpp``): penalties first (they need every candidate), then
the truncations top-k, top-p, min-p, then temperature, then a seeded random draw.
``temperature == 0`` means greedy decoding: penalties, then argmax.

Samplers that would change nothing (top-k 0, top-p 1, min-p 0, penalties at their
neutral values) are left out, so a plain request costs one or two sampler calls.
``llama_sampler_sample(chain, ctx, i)`` reads the logits of output ``i`` of the last
decode and also *accepts* the chosen token into the chain (the penalties' history).

Grammars (``GenerationRequest.grammar``, docs/structured-output.md). llama.cpp's
grammar sampler sets the logit of every token the grammar does not allow next to
``-inf``. Applied to all 49,152 candidates of the bundled model it walks the
grammar for each token's text, every step: milliseconds, on the one scheduler thread
that samples for every stream of the batch, so every other stream would wait for it.
So a grammar is applied the way llama.cpp's own ``common_sampler`` does it, lazily
(:class:`LazyGrammarSampler`): sample with the chain alone, test only the chosen
token against the grammar, and only when the grammar rejects it, sample again with
the grammar applied to every candidate first. Most steps cost the grammar one token;
the figures are in docs/structured-output.md. The grammar also decides the end: an
end-of-generation token passes only where the grammar is complete, and once it is,
nothing else does.
"""

from __future__ import annotations

import ctypes
import itertools
import math
from typing import Any

from rawstream.engine.base import GenerationRequest

__all__ = [
    "PENALTY_LAST_N",
    "LazyGrammarSampler",
    "build_sampler_chain",
    "chain_seed",
    "lazy_grammar_enabled",
]

#: Tokens of recent history the repetition penalties look at (llama.cpp's default).
PENALTY_LAST_N = 64
#: llama.cpp's "pick a random seed" value.
_RANDOM_SEED = 0xFFFFFFFF
#: Whether grammars are checked lazily (``False``: the grammar is the chain's first
#: sampler and sees every candidate every step; only for measuring the difference).
lazy_grammar_enabled = True


def chain_seed(seed: int | None) -> int:
    """The 32-bit seed for llama.cpp's ``dist`` sampler (``None``: random)."""
    if seed is None:
        return _RANDOM_SEED
    seed &= 0xFFFFFFFF
    # 0xFFFFFFFF would mean "random" to llama.cpp; an explicit seed stays fixed.
    return seed if seed != _RANDOM_SEED else 0


def build_sampler_chain(
    lib: Any, request: GenerationRequest, n_vocab: int, vocab: Any = None
) -> Any:
    """A new sampler for ``request``; free it with ``llama_sampler_free``.

    ``lib`` is the ``llama_cpp.llama_cpp`` bindings module; ``n_vocab`` the size of
    the model's vocabulary (the penalties sampler of this llama.cpp version wants it).
    A request with a ``grammar`` needs the model's ``vocab`` too, and gets a
    :class:`LazyGrammarSampler` around the chain; a grammar llama.cpp cannot parse
    raises :class:`ValueError` (the engine checks it before, see
    :mod:`rawstream.engine.grammar`).
    """
    if request.grammar is None:
        return _chain(lib, request, n_vocab)
    if vocab is None:
        raise ValueError("a grammar needs the model's vocabulary")
    grammar = lib.llama_sampler_init_grammar(vocab, request.grammar.encode(), b"root")
    if not grammar:
        raise ValueError("llama.cpp cannot parse the grammar")
    if not lazy_grammar_enabled:
        return _chain(lib, request, n_vocab, first=grammar)
    return LazyGrammarSampler.create(lib, _chain(lib, request, n_vocab), grammar)


def _chain(lib: Any, request: GenerationRequest, n_vocab: int, first: Any = None) -> Any:
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    if first is not None:
        add(chain, first)
    if (
        request.repeat_penalty != 1.0
        or request.frequency_penalty != 0.0
        or request.presence_penalty != 0.0
    ):
        add(
            chain,
            lib.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                request.repeat_penalty,
                request.frequency_penalty,
                request.presence_penalty,
            ),
        )
    if request.temperature <= 0.0:
        add(chain, lib.llama_sampler_init_greedy())
        return chain
    if request.top_k > 0:
        add(chain, lib.llama_sampler_init_top_k(request.top_k))
    if request.top_p < 1.0:
        add(chain, lib.llama_sampler_init_top_p(request.top_p, 1))
    if request.min_p > 0.0:
        add(chain, lib.llama_sampler_init_min_p(request.min_p, 1))
    add(chain, lib.llama_sampler_init_temp(request.temperature))
    add(chain, lib.llama_sampler_init_dist(chain_seed(request.seed)))
    return chain


class LazyGrammarSampler:
    """A llama.cpp sampler (``llama_sampler_init`` with callbacks written here) that
    owns a chain and a grammar and applies the grammar lazily.

    ``apply`` (llama.cpp calls it with every candidate of the output being sampled):

    1. copy the candidates (one ``memmove``: 12 bytes a token);
    2. let the chain pick a token;
    3. ask the grammar about that one token (a candidate array of size 1: the
       grammar leaves its logit alone or sets it to ``-inf``);
    4. rejected: put the copy back, apply the grammar to every candidate, then let
       the chain pick again; it picks from what the grammar allows.

    ``accept`` passes the token to the grammar (which advances) and to the chain
    (the penalties' history); ``free`` frees both. The callbacks are one interface
    shared by every instance; each sampler's ``ctx`` is a key into a table of the
    Python objects, so nothing a running callback needs is collected under it. An
    exception in a callback (a bug) turns the grammar off for that stream rather
    than let it reach llama.cpp: the chain alone picks from then on, and
    :attr:`failed` says so.
    """

    _live: dict[int, LazyGrammarSampler] = {}
    _keys = itertools.count(1)  # 0 would be a NULL ctx
    _iface: Any = None  # the llama_sampler_i, built on first use

    def __init__(self, lib: Any, chain: Any, grammar: Any) -> None:
        self._lib = lib
        self.chain = chain
        self.grammar = grammar
        self._saved: Any = None  # the copy of the candidates, sized on first use
        self._one = lib.llama_token_data(0, 0.0, 0.0)
        self._one_array = lib.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)
        #: Steps sampled, and those where the grammar rejected the chain's choice.
        self.steps = 0
        self.rejections = 0
        #: Whether a callback failed and the grammar was turned off.
        self.failed = False

    @classmethod
    def create(cls, lib: Any, chain: Any, grammar: Any) -> Any:
        """A ``llama_sampler *`` owning ``chain`` and ``grammar``."""
        if cls._iface is None:
            cls._iface = cls._interface(lib)
        key = next(cls._keys)
        cls._live[key] = cls(lib, chain, grammar)
        return lib.llama_sampler_init(ctypes.byref(cls._iface), ctypes.c_void_p(key))

    @classmethod
    def of(cls, sampler: Any) -> LazyGrammarSampler | None:
        """The Python side of a sampler made by :meth:`create` (``None`` for others)."""
        key = sampler.contents.ctx if sampler else None
        return cls._live.get(key) if key else None

    @classmethod
    def _interface(cls, lib: Any) -> Any:
        iface = lib.llama_sampler_i()
        iface.apply = lib.llama_sampler_i_apply(cls._on_apply)
        iface.accept = lib.llama_sampler_i_accept(cls._on_accept)
        iface.free = lib.llama_sampler_i_free(cls._on_free)
        iface.name = lib.llama_sampler_i_name(cls._on_name)
        return iface

    # The callbacks (on the thread that samples: the scheduler's).

    _NAME = ctypes.create_string_buffer(b"rawstream-lazy-grammar")

    @staticmethod
    def _on_name(sampler: Any) -> int:
        return ctypes.addressof(LazyGrammarSampler._NAME)

    @staticmethod
    def _on_apply(sampler: Any, cur_p: Any) -> None:
        self = LazyGrammarSampler._live[sampler.contents.ctx]
        try:
            self.apply(cur_p.contents)
        except BaseException:
            self.failed = True
            self._lib.llama_sampler_apply(self.chain, cur_p)

    @staticmethod
    def _on_accept(sampler: Any, token: int) -> None:
        self = LazyGrammarSampler._live[sampler.contents.ctx]
        if not self.failed:
            self._lib.llama_sampler_accept(self.grammar, token)
        self._lib.llama_sampler_accept(self.chain, token)

    @staticmethod
    def _on_free(sampler: Any) -> None:
        self = LazyGrammarSampler._live.pop(sampler.contents.ctx)
        self._lib.llama_sampler_free(self.chain)
        self._lib.llama_sampler_free(self.grammar)

    # The work.

    def apply(self, cur: Any) -> None:
        """Pick a token of ``cur`` (a ``llama_token_data_array``) the grammar allows."""
        lib = self._lib
        if self.failed:
            lib.llama_sampler_apply(self.chain, ctypes.byref(cur))
            return
        self.steps += 1
        n, data, was_sorted = cur.size, cur.data, cur.sorted
        if self._saved is None or len(self._saved) < n:
            self._saved = (lib.llama_token_data * n)()
        nbytes = n * ctypes.sizeof(lib.llama_token_data)
        ctypes.memmove(self._saved, data, nbytes)
        lib.llama_sampler_apply(self.chain, ctypes.byref(cur))
        if self.allows(cur.data[cur.selected].id):
            return
        self.rejections += 1
        ctypes.memmove(data, self._saved, nbytes)
        cur.data, cur.size, cur.selected, cur.sorted = data, n, -1, was_sorted
        lib.llama_sampler_apply(self.grammar, ctypes.byref(cur))
        lib.llama_sampler_apply(self.chain, ctypes.byref(cur))
        if not self.allows(cur.data[cur.selected].id):
            # The grammar allows no token of the vocabulary here: accepting one
            # would abort the process, so the grammar is dropped for this stream.
            self.failed = True

    def allows(self, token: int) -> bool:
        """Whether the grammar, in its current state, allows ``token`` next."""
        one, array = self._one, self._one_array
        one.id, one.logit, one.p = token, 0.0, 0.0
        array.size, array.selected, array.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return math.isfinite(one.logit)
