"""What log-probabilities cost, and that streams without them pay nothing.

Run:  .venv/bin/python benchmarks/bench_logprobs.py [--rounds 5] [--max-tokens 64]
      [--baseline REV]

Three measurements, in one process, medians over rounds:

1. **The arithmetic on real logits.** The bundled model decodes a prompt, then
   :meth:`LlamaBackend.logprobs` (a view of the logits, log-softmax, top-N, the
   :class:`TokenLogprob` objects) is timed for ``top`` 0, 5 and 20, next to one
   single-token decode step for scale.
2. **A stream through the engine.** One greedy stream of ``--max-tokens`` tokens,
   solo, without logprobs and with ``logprobs=20``, in alternating order: tokens/s
   and the difference per token.
3. **The per-token hot path of a plain stream**, against the code of ``--baseline``
   (default: the commit before log-probabilities), loaded from git into modules of
   its own: :meth:`Detokenizer.feed` and :meth:`ChunkEncoder.delta` without
   logprobs, plus ``delta`` with one token of 20 alternatives (the slow path).

Figures depend on the machine and what else runs on it; no figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rawstream.config import Config
from rawstream.engine import GenerationRequest
from rawstream.engine.backend import LlamaBackend
from rawstream.engine.base import TokenLogprob
from rawstream.engine.detok import Detokenizer
from rawstream.engine.llama import LlamaEngine
from rawstream.engine.model import resolve_model
from rawstream.sansio.openai import ChunkEncoder, Kind

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The history of the printing press begins in"
#: The last commit before log-probabilities.
BASELINE = "d18b4e3"


def median_us(fn: Callable[[], object], number: int, rounds: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=rounds)
    return statistics.median(times) / number * 1e6


def arithmetic(rounds: int) -> None:
    backend = LlamaBackend.load(
        resolve_model(None), slots=1, ctx_per_slot=512, threads=1, n_batch=64
    )
    try:
        prompt = backend.tokenize(PROMPT)
        backend.clear()
        index = backend.add_run(prompt, 0, 0, True)
        assert backend.decode() == 0
        token = prompt[-1]
        print(f"vocabulary: {backend.n_vocab} tokens")
        for top in (0, 5, 20):
            us = median_us(lambda top=top: backend.logprobs(index, token, top), 200, rounds)
            print(f"  logprobs(top={top:2d}): {us:7.1f} us per token")
        pos = len(prompt)

        def step() -> None:
            nonlocal pos
            backend.clear()
            backend.add(token, pos, 0, True)
            pos += 1
            assert backend.decode() == 0

        print(f"  one decode step (1 token, 1 thread): {median_us(step, 20, rounds):7.1f} us")
    finally:
        backend.close()


async def engine_streams(rounds: int, max_tokens: int) -> None:
    engine = LlamaEngine(Config(parallel=1, ctx_per_slot=1024, threads=1, prefix_cache=False))
    await engine.start()
    scheduler = engine._scheduler
    assert scheduler is not None and scheduler.backend is not None
    backend = scheduler.backend
    spent: list[float] = []
    real = backend.logprobs

    def timed(index: int, token: int, top: int) -> TokenLogprob:
        t0 = time.perf_counter()
        try:
            return real(index, token, top)
        finally:
            spent.append(time.perf_counter() - t0)

    backend.logprobs = timed  # type: ignore[method-assign]
    rates: dict[str, list[float]] = {"plain": [], "logprobs=20": []}
    try:
        for r in range(rounds):
            order = list(rates) if r % 2 == 0 else list(reversed(rates))
            for name in order:
                top = None if name == "plain" else 20
                request = GenerationRequest(
                    prompt=PROMPT, temperature=0.0, max_tokens=max_tokens, logprobs=top
                )
                started = time.perf_counter()
                stream = await engine.submit(request)
                tokens = sum([d.tokens async for d in stream])
                rates[name].append(tokens / (time.perf_counter() - started))
    finally:
        await engine.close()
    plain, with_lp = (statistics.median(v) for v in rates.values())
    inside = statistics.median(spent) * 1e6
    print(f"one greedy stream of {max_tokens} tokens, solo, {rounds} rounds (median):")
    print(f"  plain:       {plain:6.1f} tokens/s (logprobs computed: 0 times)")
    print(f"  logprobs=20: {with_lp:6.1f} tokens/s (logprobs computed: {len(spent)} times, ")
    print(f"               {inside:.0f} us per token on the scheduler thread)")


def baseline_module(rev: str, path: str, name: str) -> types.ModuleType:
    """The module at ``path`` as it was in ``rev``, loaded under ``name``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def interleaved_ns(old: Callable[[], object], new: Callable[[], object], rounds: int) -> str:
    """Both timed in alternating order, ``rounds`` times; the fastest of each, in ns."""
    number = 50_000
    best = {"old": float("inf"), "new": float("inf")}
    for r in range(rounds):
        pairs = [("old", old), ("new", new)]
        for name, fn in pairs if r % 2 == 0 else reversed(pairs):
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number * 1e9)
    return f"{best['old']:6.0f} ns before, {best['new']:6.0f} ns now"


def hot_path(rounds: int, rev: str) -> None:
    old_detok = baseline_module(rev, "rawstream/engine/detok.py", "baseline_detok")
    old_openai = baseline_module(rev, "rawstream/sansio/openai.py", "baseline_openai")
    piece = b" word"
    stops = ("\n\nUser:",)
    old_feed, new_feed = old_detok.Detokenizer(stops).feed, Detokenizer(stops).feed
    print(f"plain-stream hot path, now against {rev} (fastest of {rounds}, interleaved):")
    timing = interleaved_ns(lambda: old_feed(piece), lambda: new_feed(piece), rounds)
    print(f"  Detokenizer.feed:   {timing}")
    args = {"id": "chatcmpl-x", "created": 1, "model": "m"}
    old_enc = old_openai.ChunkEncoder(old_openai.Kind.CHAT, **args)
    new_enc = ChunkEncoder(Kind.CHAT, **args)
    timing = interleaved_ns(lambda: old_enc.delta(" word"), lambda: new_enc.delta(" word"), rounds)
    print(f"  ChunkEncoder.delta: {timing}")
    alternatives = tuple(TokenLogprob(f" w{i}", f" w{i}".encode(), -1.0 - i) for i in range(20))
    one = (TokenLogprob(" word", piece, -0.5, alternatives),)
    slow = median_us(lambda: new_enc.delta(" word", one), 5_000, rounds)
    print(f"  ChunkEncoder.delta with 1 token x 20 alternatives: {slow:6.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    arithmetic(args.rounds)
    asyncio.run(engine_streams(args.rounds, args.max_tokens))
    hot_path(args.rounds, args.baseline)


if __name__ == "__main__":
    main()
