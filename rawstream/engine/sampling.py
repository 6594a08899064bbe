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
"""

from __future__ import annotations

from typing import Any

from rawstream.engine.base import GenerationRequest

__all__ = ["PENALTY_LAST_N", "build_sampler_chain", "chain_seed"]

#: Tokens of recent history the repetition penalties look at (llama.cpp's default).
PENALTY_LAST_N = 64
#: llama.cpp's "pick a random seed" value.
_RANDOM_SEED = 0xFFFFFFFF


def chain_seed(seed: int | None) -> int:
    """The 32-bit seed for llama.cpp's ``dist`` sampler (``None``: random)."""
    if seed is None:
        return _RANDOM_SEED
    seed &= 0xFFFFFFFF
    # 0xFFFFFFFF would mean "random" to llama.cpp; an explicit seed stays fixed.
    return seed if seed != _RANDOM_SEED else 0


def build_sampler_chain(lib: Any, request: GenerationRequest, n_vocab: int) -> Any:
    """A new sampler chain for ``request``; free it with ``llama_sampler_free``.

    ``lib`` is the ``llama_cpp.llama_cpp`` bindings module; ``n_vocab`` the size of
    the model's vocabulary (the penalties sampler of this llama.cpp version wants it).
    """
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
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
