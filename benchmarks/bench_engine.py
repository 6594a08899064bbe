"""Benchmark the llama.cpp engine against llama-cpp-python's high-level API.

Run:  .venv/bin/python benchmarks/bench_engine.py [--rounds 5] [--max-tokens 128]

What it measures, in one process, in interleaved rounds (the order of the
measurements rotates each round, so slow phases of a shared machine spread over all
of them), reporting medians:

- single stream: tokens/s of one greedy generation, submit to last token, through
  :class:`rawstream.engine.llama.LlamaEngine` and through ``llama_cpp.Llama``'s
  ``create_completion(stream=True)`` on the same prompt, same threads, no prefix
  cache (the high-level object is ``reset()`` before each run);
- aggregate tokens/s with 1, 2, 4 and 8 concurrent streams through the engine
  (``parallel=8``, so every stream is batched);
- cancel latency: ``cancel()`` to slot freed, for a stream cancelled while
  generating and one cancelled during its prompt, as a fraction of the decode step
  that was running when ``cancel()`` was called (the most it should wait);
- time to first token (``submit()`` to the first delta) of a chat prompt sent a
  second time, and of a chat's second turn (the first turn, its reply and a new
  question), with the engine's prefix cache off and on;
- what the cache costs: tokens/s of one stream while the other 7 slots, idle, keep
  the cells of a 900-token prompt each (llama.cpp's unified cache attends over the
  range of cells in use, masked, so kept cells slow every decode step).

The engine's prefix cache is off for every other measurement, so they measure the
same work as before it existed and as the high-level API after ``reset()``.

It prints a Markdown table with the machine and versions and writes it to
``benchmarks/results/engine.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rawstream.config import Config
from rawstream.engine import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    GenerationStream,
    collect,
)
from rawstream.engine.llama import LlamaEngine
from rawstream.engine.model import resolve_model

PROMPTS = (
    "The history of the printing press begins in",
    "Once upon a time, there was",
    "Ten tips for staying productive while working from home:\n1.",
    "The water cycle is the process by which",
    "A recipe for a simple tomato soup:\nIngredients:",
    "The main differences between cats and dogs are",
    "In computer science, a hash table is",
    "Here is a short story about a robot who learns to paint:",
)
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 90  # ~900 tokens
CONCURRENCY = (1, 2, 4, 8)
#: A new conversation for every measurement (``{n}``), so that no slot holds any of
#: it beforehand: the prefix cache can only reuse that conversation's own turns.
SYSTEM = (
    "Conversation {n}. You are a helpful assistant for a small bookshop. You answer "
    "questions about opening hours, orders, deliveries and returns. Opening hours "
    "are 9 to 18 on weekdays and 10 to 16 on Saturdays; the shop is closed on "
    "Sundays. Orders over 30 euros are delivered free of charge within three working "
    "days. Books may be returned within 30 days with the receipt. Be brief, friendly "
    "and precise, and say so when you do not know the answer rather than guessing."
)
QUESTION = ChatMessage("user", "When are you open on Saturdays?")
FOLLOW_UP = ChatMessage("user", "And can I return a book I bought last week?")
RESULTS = Path(__file__).parent / "results" / "engine.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples: dict[str, list[float]] = {}
        self.prompt_sizes: dict[int, int] = {}  # by number of chat messages
        self.conversations = 100
        self.load_start = "n/a"
        self.model_path = resolve_model(args.model)
        threads = args.threads or os.cpu_count() or 1
        self.threads = threads
        self.engine = LlamaEngine(
            Config(
                model=str(self.model_path),
                parallel=max(CONCURRENCY),
                ctx_per_slot=1024,
                threads=threads,
                max_queue=0,
                stream_buffer_tokens=1 << 20,  # the benchmark reads as fast as it can
            ),
            prefix_cache=False,  # on only for the prefix-cache measurements
        )
        self.llm = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=1024,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def record(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    # --- measurements ---------------------------------------------------------------

    def high_level_single(self) -> None:
        self.llm.reset()
        t0 = time.perf_counter()
        tokens = 0
        for _chunk in self.llm.create_completion(
            PROMPTS[0], max_tokens=self.args.max_tokens, temperature=0.0, stream=True
        ):
            tokens += 1
        self.record("high_level_single", tokens / (time.perf_counter() - t0))

    async def engine_concurrent(self, n: int, name: str = "") -> None:
        requests = [
            GenerationRequest(prompt=PROMPTS[i], temperature=0.0, max_tokens=self.args.max_tokens)
            for i in range(n)
        ]
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*[collect(await self.engine.submit(r)) for r in requests])
        wall = time.perf_counter() - t0
        tokens = sum(result.usage.completion_tokens for _, result in outcomes)
        self.record(name or f"engine_{n}", tokens / wall)

    async def cancel_latency(self) -> None:
        # while generating: cancel after the first delta
        stream = await self.engine.submit(GenerationRequest(prompt=PROMPTS[1], max_tokens=10_000))
        await anext(aiter(stream))
        await self._cancel("generating", stream)
        # during the prompt: cancel once the first chunk has been decoded
        stream = await self.engine.submit(GenerationRequest(prompt=LONG_PROMPT, max_tokens=10))
        await stream.wait_started()  # type: ignore[attr-defined]
        await self._cancel("prompt", stream)

    async def _cancel(self, case: str, stream: GenerationStream) -> None:
        """Cancel; compare the latency with the decode step that was in flight.

        The engine is otherwise idle, so the decode steps that end between cancel()
        and the result are the one in flight (or none, if the cancellation arrived
        between steps): a cancellation within one step means a ratio <= 1.
        """
        before = self.engine.statistics()
        stream.cancel()
        result = await stream.wait_result()
        after = self.engine.statistics()
        assert result.finish_reason is FinishReason.CANCELLED
        assert result.timings.cancel_latency is not None
        steps = after.decode_steps_total - before.decode_steps_total
        in_flight = after.decode_seconds_total - before.decode_seconds_total
        self.record(f"cancel_{case}", result.timings.cancel_latency)
        self.record(f"cancel_steps_{case}", steps)
        if steps:
            self.record(f"cancel_ratio_{case}", result.timings.cancel_latency / in_flight)

    async def _first_token(self, request: GenerationRequest) -> tuple[float, int, str]:
        """Seconds from submit to the first delta, prompt tokens reused, whole text."""
        before = self.engine.statistics().prefix_cached_tokens_total
        t0 = time.perf_counter()
        stream = await self.engine.submit(request)
        first = await anext(aiter(stream))
        ttft = time.perf_counter() - t0
        rest, _ = await collect(stream)
        cached = self.engine.statistics().prefix_cached_tokens_total - before
        self.prompt_sizes[len(request.messages or ())] = stream.prompt_tokens
        return ttft, cached, first.text + rest

    async def prefix_ttft(self) -> None:
        """TTFT of a repeated chat prompt and of a chat's second turn, reuse off/on."""
        try:
            for reuse in (False, True):
                self.conversations += 1
                system = ChatMessage("system", SYSTEM.format(n=self.conversations))
                first_turn = GenerationRequest(
                    messages=(system, QUESTION),
                    temperature=0.0,
                    max_tokens=self.args.reply_tokens,
                )
                self.engine.prefix_cache = reuse
                label = "on" if reuse else "off"
                _, _, reply = await self._first_token(first_turn)  # the first time
                ttft, cached, _ = await self._first_token(first_turn)  # the same again
                self.record(f"ttft_repeat_{label}", ttft)
                self.record(f"cached_repeat_{label}", cached)
                second_turn = GenerationRequest(
                    messages=(system, QUESTION, ChatMessage("assistant", reply), FOLLOW_UP),
                    temperature=0.0,
                    max_tokens=self.args.reply_tokens,
                )
                ttft, cached, _ = await self._first_token(second_turn)
                self.record(f"ttft_turn_{label}", ttft)
                self.record(f"cached_turn_{label}", cached)
        finally:
            self.engine.prefix_cache = False

    async def warm_slots_single(self) -> None:
        """One stream's tokens/s while the other slots keep long prompts' cells."""
        self.engine.prefix_cache = True
        try:
            fills = [
                GenerationRequest(prompt=f"{i}. {LONG_PROMPT}", max_tokens=1)
                for i in range(max(CONCURRENCY) - 1)
            ]
            await asyncio.gather(*[collect(await self.engine.submit(r)) for r in fills])
            await self.engine_concurrent(1, name="engine_1_warm")
        finally:
            self.engine.prefix_cache = False

    async def run(self) -> None:
        self.load_start = loadavg()
        await self.engine.start()
        # warm up both paths (first decode allocates buffers)
        self.high_level_single()
        await self.engine_concurrent(1)
        self.samples.clear()
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("high-level", self._async(self.high_level_single)),
            *[(f"engine x{n}", self._concurrent(n)) for n in CONCURRENCY],
            ("cancel", self.cancel_latency),
            ("prefix TTFT", self.prefix_ttft),
            ("warm slots", self.warm_slots_single),
        ]
        for r in range(self.args.rounds):
            order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]
            for _name, job in order:
                await job()
            print(f"round {r + 1}/{self.args.rounds} done ({', '.join(n for n, _ in order)})")
        await self.engine.close()

    @staticmethod
    def _async(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            fn()

        return run

    def _concurrent(self, n: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await self.engine_concurrent(n)

        return run

    # --- report ---------------------------------------------------------------------

    def report(self) -> str:
        single = self.median("engine_1")
        high = self.median("high_level_single")
        lines = [
            "# Engine benchmark",
            "",
            f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}; load average (1/5/15 min) at start {self.load_start}, "
            f"at end {loadavg()}",
            f"- Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}, "
            f"model {self.model_path.name}, {self.threads} threads",
            f"- {self.args.rounds} interleaved rounds, medians; greedy, "
            f"{self.args.max_tokens} tokens per stream, tokens/s from submit to last token",
            f"- Command: `.venv/bin/python benchmarks/bench_engine.py --rounds {self.args.rounds} "
            f"--max-tokens {self.args.max_tokens} --reply-tokens {self.args.reply_tokens}`",
            "",
            "| Measurement | Median | Ratio |",
            "|---|---:|---:|",
            f"| High-level `Llama.create_completion`, 1 stream | {high:.1f} tok/s | 1.00x |",
            f"| Engine, 1 stream | {single:.1f} tok/s | {single / high:.2f}x high-level |",
        ]
        for n in CONCURRENCY[1:]:
            agg = self.median(f"engine_{n}")
            lines.append(
                f"| Engine, {n} concurrent streams (aggregate) | {agg:.1f} tok/s | "
                f"{agg / single:.2f}x engine 1 stream |"
            )
        warm = self.median("engine_1_warm")
        idle = max(CONCURRENCY) - 1
        lines.append(
            f"| Engine, 1 stream, {idle} idle slots keeping 900-token prompts (prefix cache) "
            f"| {warm:.1f} tok/s | {warm / single:.2f}x engine 1 stream |"
        )
        for case, label in (
            ("generating", "while generating"),
            ("prompt", "during a 900-token prompt"),
        ):
            ms = self.median(f"cancel_{case}") * 1000
            most_steps = max(self.samples[f"cancel_steps_{case}"])
            ratios = self.samples.get(f"cancel_ratio_{case}", [0.0])
            lines.append(
                f"| Cancel latency {label} (cancel() to slot freed) | {ms:.1f} ms | "
                f"<= {max(ratios):.2f} x the step in flight; "
                f"{most_steps:.0f} step(s) ended in between |"
            )
        sizes = self.prompt_sizes
        for case, label in (
            ("repeat", f"the same {sizes[2]}-token chat prompt again"),
            ("turn", f"a chat's second turn ({sizes[4]} tokens)"),
        ):
            off = self.median(f"ttft_{case}_off") * 1000
            on = self.median(f"ttft_{case}_on") * 1000
            cached = self.median(f"cached_{case}_on")
            lines.append(
                f"| Time to first token, {label}, prefix cache off | {off:.1f} ms | 1.00x |"
            )
            lines.append(
                f"| Time to first token, {label}, prefix cache on | {on:.1f} ms | "
                f"{off / on:.1f}x faster; {cached:.0f} prompt tokens reused |"
            )
        return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    parser.add_argument(
        "--reply-tokens", type=int, default=32, help="max tokens of the chat replies"
    )
    parser.add_argument("--model", default=None, help="GGUF file (default: bundled model)")
    parser.add_argument("--no-write", action="store_true", help="do not write results/engine.md")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(bench.run())
    table = bench.report()
    print()
    print(table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
