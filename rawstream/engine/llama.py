"""LlamaEngine: a GGUF model in this process, many streams batched on one context.

The engine is the event loop's face of two threads it owns: the
:class:`~rawstream.engine.scheduler.Scheduler` thread, which owns the llama.cpp
context and runs the decode steps, and the *preparation* thread, which renders chat
templates and tokenises prompts. Its own work on the loop is small and bounded:

- :meth:`LlamaEngine.submit` checks ``max_tokens``, takes a place from
  :class:`~rawstream.engine.admission.Admission` (or raises :class:`Overloaded` at
  once, before any work), then awaits the preparation thread, which renders the
  chat template and tokenises (message content without special tokens, see
  docs/engine.md). A prompt that is empty or does not fit the context is refused
  with :class:`InvalidRequest` and gives its place back; one that fits becomes a
  :class:`~rawstream.engine.scheduler.Job` in the scheduler's inbox;
- once per decode step, :meth:`LlamaEngine._apply` receives that step's
  :class:`~rawstream.engine.scheduler.StepReport` (one ``call_soon_threadsafe``)
  and pushes text and results into the :class:`~rawstream.engine.stream.EngineStream`
  objects;
- a stream's ``cancel()`` and a drained buffer go to the scheduler through its
  lock-protected inbox and wake the thread if it sleeps.

Structured output and tool calls (docs/structured-output.md) are prepared there
too: the preparation thread renders the tools into the prompt
(:mod:`rawstream.engine.chat`), turns what the reply must be into a grammar and has
llama.cpp parse it (:mod:`rawstream.engine.grammar`), so a schema that cannot be
enforced is an :class:`InvalidRequest` (400) before any decoding. ``tool_choice:
"auto"`` with tools needs a chat template that supports tools; with one that does
not (the bundled model's), it is refused, pointing at ``required`` and a named
function, which work with any template because a grammar writes the call.

Why a thread of its own for preparation: a chat of 30,000 tiny messages (1 MiB)
takes a few hundred milliseconds to render and tokenise. On the loop that froze
every connection; on the scheduler thread it would hold the GIL between decode
steps and stall every stream. The preparation thread is a single worker fed only by
admitted requests, so its backlog is bounded by ``parallel + max_queue``. A request
whose caller is cancelled while it waits (the client left) gives its place back at
once; one whose preparation is already running keeps the place until the thread is
done with it, and never reaches a slot.

Configuration (:class:`rawstream.config.Config`): ``parallel`` slots, each with
``ctx_per_slot`` tokens of context; ``threads`` for llama.cpp; ``max_queue`` waiting
requests; ``stream_buffer_tokens`` per stream before it is paused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rawstream.config import Config
from rawstream.engine.admission import Admission
from rawstream.engine.base import (
    Engine,
    EngineState,
    EngineStatistics,
    GenerationRequest,
    GenerationStream,
    InvalidRequest,
    NotReady,
    check_max_tokens,
    check_prompt_length,
)
from rawstream.engine.chat import ChatTemplate, NoChatTemplate, check_tool_choice
from rawstream.engine.detok import Detokenizer
from rawstream.engine.model import DEFAULT_MODEL_FILE, resolve_model
from rawstream.engine.scheduler import PREFILL_CHUNK, Job, Scheduler, StepReport
from rawstream.engine.stream import EngineStream

if TYPE_CHECKING:  # both import llama_cpp; the engine loads them in start()
    from rawstream.engine.grammar import GrammarBackend

__all__ = ["LlamaEngine"]

#: What preparation makes of a request: its prompt tokens and its grammar.
_Prepared = tuple[list[int], str | None]

log = logging.getLogger("rawstream.engine")


def _model_name(path: str | None) -> str:
    name = Path(path).name if path else DEFAULT_MODEL_FILE
    return name.removesuffix(".gguf")


class LlamaEngine(Engine):
    """Serve a GGUF model with llama.cpp, batching up to ``config.parallel`` streams."""

    def __init__(self, config: Config, *, prefix_cache: bool | None = None) -> None:
        self.config = config
        self._prefix_cache = config.prefix_cache if prefix_cache is None else prefix_cache
        self.model_name = _model_name(config.model)
        self.slots = max(1, config.parallel)
        self.ctx_per_slot = config.ctx_per_slot
        #: The GGUF file in use, once :meth:`start` has resolved it.
        self.model_path: Path | None = None
        #: Why :meth:`start` failed, when the state is FAILED.
        self.error: BaseException | None = None
        self._state = EngineState.LOADING
        self._admission = Admission(self.slots, config.max_queue)
        self._ids = itertools.count(1)
        self._started = False
        self._scheduler: Scheduler | None = None
        self._backend: GrammarBackend | None = None  # the scheduler's, once loaded
        self._template: ChatTemplate | NoChatTemplate = NoChatTemplate()
        self._jobs: dict[int, Job] = {}  # by stream id, until the stream ends
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        #: Renders chat templates and tokenises prompts off the event loop: one
        #: thread, fed only by admitted requests (docs/engine.md).
        self._preparer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rawstream-prompt"
        )

    @property
    def state(self) -> EngineState:
        return self._state

    async def start(self) -> None:
        """Load the model in the scheduler thread, without blocking the loop.

        The state is LOADING meanwhile, then READY, or FAILED with :attr:`error`
        set and logged (a missing model gives a
        :class:`~rawstream.engine.model.ModelNotFoundError` whose message says how
        to install the default model or pass ``--model``). It does not raise: the
        server keeps answering ``/health`` with 503.
        """
        if self._started:
            raise RuntimeError("start() may be called once")
        self._started = True
        loop = asyncio.get_running_loop()
        try:
            self.model_path = await asyncio.to_thread(resolve_model, self.config.model)
            # importing llama_cpp loads its shared libraries: do it here, not at import
            from rawstream.engine.grammar import GrammarBackend
        except Exception as exc:
            self._fail(exc)
            return
        if self._closing:  # close() was called while the path was resolved
            return
        path = self.model_path
        ready: asyncio.Future[BaseException | None] = loop.create_future()
        self._stopped = loop.create_future()

        def load() -> GrammarBackend:
            backend = GrammarBackend.load(
                path,
                slots=self.slots,
                ctx_per_slot=self.ctx_per_slot,
                threads=self.config.threads,
                n_batch=PREFILL_CHUNK + self.slots,
            )
            assert isinstance(backend, GrammarBackend)  # load() builds its own class
            return backend

        def on_ready(error: BaseException | None) -> None:
            if not ready.done():
                ready.set_result(error)

        def on_stopped(error: BaseException | None) -> None:
            if error is not None and not self._closing:
                self._fail(error)
            assert self._stopped is not None
            if not self._stopped.done():
                self._stopped.set_result(None)

        self._scheduler = Scheduler(
            load,
            loop,
            on_ready=on_ready,
            on_report=self._apply,
            on_stopped=on_stopped,
            prefix_cache=self._prefix_cache,
        )
        self._scheduler.start()
        error = await ready
        if error is not None:
            self._fail(error)
            return
        assert isinstance(self._scheduler.backend, GrammarBackend)
        self._backend = self._scheduler.backend
        try:
            self._template = self._backend.chat_template()
        except InvalidRequest as exc:  # a template that does not compile
            self._template = NoChatTemplate()
            self.error = exc
        if not self._closing:
            self._state = EngineState.READY

    @property
    def prefix_cache(self) -> bool:
        """Whether a prompt reuses the KV of a slot's previous tokens (docs/engine.md).

        On by default; switching it takes effect at the scheduler's next step.
        """
        return self._prefix_cache

    @prefix_cache.setter
    def prefix_cache(self, on: bool) -> None:
        self._prefix_cache = on
        if self._scheduler is not None:
            self._scheduler.prefix_cache = on

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._state = EngineState.FAILED
        log.error("engine failed: %s", error)

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        """Admit ``request``; see :meth:`Engine.submit` for the errors raised.

        The place in :class:`Admission` is taken first, so a full engine refuses at
        once, before any work. The prompt is then prepared on the preparation
        thread (:meth:`_prepare`) while the loop serves everyone else; a refused
        prompt gives its place back.
        """
        self._check_ready()
        check_max_tokens(request)
        self._admission.admit()
        try:
            prompt, grammar = await self._prepare(request)
            self._check_ready()  # close() may have begun meanwhile
            check_prompt_length(len(prompt), self.ctx_per_slot)
        except asyncio.CancelledError:
            raise  # _prepare has seen to the place
        except BaseException:
            self._admission.refund()
            self._check_ready()  # the model went away meanwhile: NotReady, not a bug
            raise
        scheduler = self._scheduler
        assert scheduler is not None
        stream = EngineStream(
            next(self._ids),
            len(prompt),
            self.config.stream_buffer_tokens,
            on_cancel=self._on_cancel,
            on_drain=self._on_drain,
        )
        if grammar != request.grammar:
            request = replace(request, grammar=grammar)
        job = Job(
            stream=stream,
            request=request,
            prompt=prompt,
            max_tokens=request.max_tokens,
            submitted_at=time.perf_counter(),
            detok=Detokenizer(request.stop),
        )
        self._jobs[stream.id] = job
        scheduler.submit(job)
        return stream

    def _check_ready(self) -> None:
        if self._state is not EngineState.READY or self._scheduler is None or self._closing:
            raise NotReady("engine is closing" if self._closing else f"engine is {self._state}")

    async def _prepare(self, request: GenerationRequest) -> _Prepared:
        """The prompt tokens and the grammar of ``request``, from the preparation thread.

        The caller holds an admission place and gives it back if this raises. If
        the caller is cancelled instead (its client left), the place is given back
        here: at once when the work had not started, else when the thread is done
        with it. So the thread's backlog never exceeds the places of
        :class:`Admission`, however often clients come and go.
        """
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[_Prepared] = loop.create_future()
        prep = _Preparation(request)

        def settle(work: concurrent.futures.Future[_Prepared]) -> None:
            if outcome.cancelled():  # abandoned by the caller
                if not prep.refunded:
                    prep.refunded = True
                    self._admission.refund()
            elif work.cancelled():  # close() dropped it before it started
                outcome.set_exception(NotReady("engine is closing"))
            elif (error := work.exception()) is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(work.result())

        def done(work: concurrent.futures.Future[_Prepared]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, work)

        try:
            work = self._preparer.submit(self._prepare_now, prep)
        except RuntimeError as exc:  # shut down by close()
            raise NotReady("engine is closing") from exc
        work.add_done_callback(done)
        try:
            return await outcome
        except asyncio.CancelledError:
            prep.abandoned = True  # the thread stops at its next check
            if work.cancel():  # not started: it never will, the place is free now
                prep.refunded = True
                self._admission.refund()
            raise

    def _prepare_now(self, prep: _Preparation) -> _Prepared:
        """Render and tokenise, then build and check the grammar (on the preparation
        thread); see :meth:`_tokenize` and :meth:`GrammarBackend.prepare_grammar`."""
        if self._closing:
            raise NotReady("engine is closing")
        if prep.abandoned:
            raise NotReady("the request was abandoned")
        request = prep.request
        if request.tools:
            check_tool_choice(request, self._template.supports_tools)
        prompt = self._tokenize(request, prep)
        if prep.abandoned:
            raise NotReady("the request was abandoned")
        assert self._backend is not None
        return prompt, self._backend.prepare_grammar(request)

    def _tokenize(self, request: GenerationRequest, prep: _Preparation | None = None) -> list[int]:
        """The prompt tokens of ``request`` (any thread; it only reads the vocabulary).

        Chat messages: the template's text with special tokens parsed, message
        content without, so content cannot forge a turn. A raw prompt is its
        author's whole prompt and is parsed like llama.cpp's server does, so it may
        write control tokens itself. ``prep``, when given, is checked between
        rendering and tokenising, to drop the work of an abandoned request.
        """
        assert self._scheduler is not None and self._scheduler.backend is not None
        backend = self._scheduler.backend
        if request.messages is not None:
            if request.tools:
                parts = self._template.render_parts(
                    request.messages, tools=request.tools, tool_choice=request.tool_choice
                )
            else:  # tool messages and calls still need a template without tool support
                parts = self._template.render_parts(request.messages)
            if prep is not None and prep.abandoned:
                raise NotReady("the request was abandoned")
            return backend.tokenize_parts(parts)
        assert request.prompt is not None
        return backend.tokenize(request.prompt, add_special=True, parse_special=True)

    def _on_cancel(self, stream: EngineStream) -> None:
        job = self._jobs.get(stream.id)
        if job is not None and self._scheduler is not None:
            self._scheduler.cancel(job)

    def _on_drain(self, stream: EngineStream) -> None:
        if self._scheduler is not None:
            self._scheduler.wake()

    def _apply(self, report: StepReport) -> None:
        """Apply one scheduler step to the streams (on the event loop)."""
        for stream, step in report.started:
            stream.mark_started(step)
        for stream, text, tokens in report.texts:
            stream.push(text, tokens)
        now = time.perf_counter()
        for stream, result, step in report.ended:
            job = self._jobs.pop(stream.id, None)
            if job is not None:
                self._admission.release(now - job.submitted_at)
            stream.finish(result, step)

    def statistics(self) -> EngineStatistics:
        """Counters of the engine and its scheduler thread."""
        s = self._scheduler
        paused = sum(1 for job in self._jobs.values() if job.stream.paused)
        busy = s.busy_slots if s else 0
        cancelled = s.cancelled if s else 0
        extra: dict[str, object] = {
            "model": self.model_name,
            "ctx_per_slot": self.ctx_per_slot,
            "cancel_latency_seconds_total": s.cancel_latency_sum if s else 0.0,
            "cancel_latency_seconds_max": s.cancel_latency_max if s else 0.0,
            "decode_errors_total": s.decode_errors if s else 0,
        }
        return EngineStatistics(
            state=self._state,
            slots=self.slots,
            busy_slots=busy,
            active_streams=busy,
            queued_streams=max(0, len(self._jobs) - busy),
            paused_streams=paused,
            prompt_tokens_total=s.prompt_tokens if s else 0,
            completion_tokens_total=s.completion_tokens if s else 0,
            decode_steps_total=s.steps if s else 0,
            decode_seconds_total=s.decode_seconds if s else 0.0,
            batch_tokens_total=s.batch_tokens if s else 0,
            cancelled_total=cancelled,
            prefix_cached_tokens_total=s.prefix_cached_tokens if s else 0,
            extra=extra,
        )

    async def close(self) -> None:
        """Cancel every stream, stop the scheduler thread and free the model.

        Preparations not started yet are refused with :class:`NotReady`; the one in
        progress is waited for (on a worker thread, not the loop), since it reads the
        model's vocabulary, which the scheduler thread frees when it stops.
        """
        if self._closing:
            if self._stopped is not None:
                await asyncio.shield(self._stopped)
            return
        self._closing = True
        shutdown = functools.partial(self._preparer.shutdown, wait=True, cancel_futures=True)
        await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, shutdown))
        if self._scheduler is not None:
            self._scheduler.stop()
            if self._stopped is not None:
                await asyncio.shield(self._stopped)
        if self._state is not EngineState.FAILED:
            self._state = EngineState.STOPPED


@dataclass(eq=False, slots=True)
class _Preparation:
    """A request whose prompt the preparation thread is to render and tokenise."""

    request: GenerationRequest
    #: Set on the loop when the caller gave up; read by the thread between phases.
    abandoned: bool = False
    #: Whether its admission place was given back already (on the loop).
    refunded: bool = False
