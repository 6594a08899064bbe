"""The scheduler thread: continuous batching of many streams on one llama.cpp context.

One thread owns the model's context and runs this loop (:meth:`Scheduler.run`)::

    take new jobs and cancellations from the inbox (under the lock)
    free the slots of cancelled jobs                       -> ended
    give free slots to waiting jobs, oldest first          -> started
    build ONE batch:
        one token for every generating job whose buffer has room
        prompt chunks of jobs still reading their prompt, <= PREFILL_CHUNK in all
    if the batch is empty: sleep on the condition until submit/cancel/drain/stop
    llama_decode(batch)                                    (GIL released)
    sample each job that got logits (and read its logprobs, if it asked for them);
    detokenise; check stop strings and limits
    free the slots of finished jobs                        -> ended
    hand the step's report to the event loop with ONE call_soon_threadsafe
    (cancelled jobs are reported before the decode, in a hop of their own)

A **slot** is a llama.cpp sequence id (``0 .. slots-1``) in a unified KV cache; a
job keeps its slot from admission to its end.

Prefix caching: when a job ends, its slot keeps its KV cells, and the scheduler
remembers which tokens they hold (:attr:`Scheduler.slot_tokens`): the prompt tokens
decoded so far plus the generated tokens that went through a decode. The last
sampled token never did, so it is not among them. A new job takes the free slot
whose remembered tokens share the longest prefix with its prompt (none shared: the
least recently used slot), ``llama_memory_seq_rm(seq, p0=prefix, -1)`` drops the
cells past that prefix, and only the rest of the prompt is decoded. At least one
prompt token is always decoded, so that there are logits to sample from: a prompt
that is cached whole keeps ``len(prompt) - 1``.

Why that is exact: jobs are cancelled, admitted and ended only between decodes, so
at those points a job's KV holds precisely its positions ``0 .. n_past-1``; a
cancelled job that was reading its prompt leaves the chunks decoded so far, which a
retry of the same prompt reuses. After a failed ``llama_decode`` the cells are in
doubt, so the slot is cleared and remembers nothing.

Why prompts go in chunks: a step takes as long as its batch, so one 2,000-token
prompt in one step would stall every other stream for that long and could not be
cancelled halfway. At most :data:`PREFILL_CHUNK` prompt tokens go into a step, and
the inbox (cancellations included) is read between steps.

Backpressure: a job whose consumer has :attr:`~FlowControl.limit` unread tokens is
left out of the batch (it "sits out" the step) while the others carry on; reading
calls :meth:`Scheduler.wake`. When every job sits out and nothing else is waiting
the thread sleeps: it never polls.

Log-probabilities: a job whose request sets ``logprobs`` has them computed from
the logits of its output right after its token is sampled, before the next decode
overwrites them (:meth:`LlamaBackend.logprobs`); other jobs never touch the
logits. They go through the job's :class:`Detokenizer` with the token, so they are
released with its text, and reach the stream ahead of that text in the same hop
to the loop (:attr:`StepReport.logprobs`).

Lost wake-ups are avoided with a ``dirty`` flag that :meth:`submit`, :meth:`cancel`,
:meth:`wake` and :meth:`stop` set under the lock. The thread clears it under the lock
*before* it looks at the jobs, and only sleeps if it is still clear afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rawstream.engine.base import (
    FinishReason,
    GenerationRequest,
    Result,
    Timings,
    TokenLogprob,
    Usage,
)
from rawstream.engine.detok import Detokenizer, Piece
from rawstream.engine.stream import EngineStream

if TYPE_CHECKING:  # the backend imports llama_cpp; the engine loads it in start()
    from rawstream.engine.backend import LlamaBackend

__all__ = ["PREFILL_CHUNK", "Job", "Scheduler", "StepReport", "common_prefix"]

#: Most prompt tokens decoded in one step (over all jobs): bounds the time a step
#: takes, hence the inter-token delay of the other streams and cancel latency.
PREFILL_CHUNK = 128


@dataclass(eq=False, slots=True)
class Job:
    """The scheduler's record of one stream (touched by the scheduler thread only)."""

    stream: EngineStream
    request: GenerationRequest
    prompt: list[int]
    max_tokens: int | None
    submitted_at: float
    detok: Detokenizer
    seq: int = -1  #: the slot, while it holds one
    sampler: Any = None
    n_past: int = 0  #: tokens of this job in the KV cache
    n_prompt_done: int = 0  #: prompt tokens already put in a batch
    out_index: int = -1  #: batch index whose logits this job samples, this step
    last_token: int = -1  #: sampled, not yet in the KV cache
    output: list[int] = field(default_factory=list)  #: generated tokens, in order
    generated: int = 0
    started_at: float | None = None
    first_token_at: float | None = None
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.n_prompt_done < len(self.prompt)

    def kv_tokens(self) -> list[int]:
        """The tokens at positions ``0 .. n_past-1`` of the slot (valid between steps).

        The prompt tokens decoded so far, then the generated tokens that have been
        decoded: ``last_token`` is added to a batch one step after it is sampled.
        """
        return self.prompt[: self.n_prompt_done] + self.output[: self.n_past - self.n_prompt_done]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``.

    A binary search over slice comparisons: they run in C, so a 2,000-token prompt
    costs a dozen list comparisons rather than 2,000 Python iterations.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(slots=True)
class StepReport:
    """What one scheduler step changed, for the event loop to apply in one go.

    ``logprobs`` are those of the tokens of ``texts``, per stream, for the streams
    that asked for them; :class:`Scheduler` hands them to their streams
    (:meth:`EngineStream.push_logprobs`) just before ``on_report`` runs.
    """

    step: int  #: decode steps completed when the report was made
    started: list[tuple[EngineStream, int]] = field(default_factory=list)
    texts: list[tuple[EngineStream, str, int]] = field(default_factory=list)
    ended: list[tuple[EngineStream, Result, int]] = field(default_factory=list)
    logprobs: list[tuple[EngineStream, tuple[TokenLogprob, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.started or self.texts or self.ended)


class Scheduler:
    """Runs continuous batching for one :class:`LlamaBackend` in its own thread.

    ``load`` builds the backend inside the thread (so the context is created where it
    is used). ``on_ready(error)`` and ``on_report(report)`` are called on the event
    loop through ``loop.call_soon_threadsafe``; ``on_stopped(error)`` likewise when
    the thread has freed the model and is about to exit (``error`` is set when the
    thread died of an exception rather than :meth:`stop`).
    """

    def __init__(
        self,
        load: Callable[[], LlamaBackend],
        loop: asyncio.AbstractEventLoop,
        *,
        on_ready: Callable[[BaseException | None], None],
        on_report: Callable[[StepReport], None],
        on_stopped: Callable[[BaseException | None], None],
        prefix_cache: bool = True,
    ) -> None:
        self._load = load
        self._loop = loop
        self._on_ready = on_ready
        self._on_report = on_report
        self._on_stopped = on_stopped
        self._cond = threading.Condition(threading.Lock())
        # shared with the loop thread, guarded by _cond
        self._inbox: list[Job] = []
        self._cancels: list[Job] = []
        self._dirty = False
        self._stopping = False
        # scheduler-thread state
        self.backend: LlamaBackend | None = None
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._free_seqs: list[int] = []
        #: Whether free slots keep their KV cells for the next prompt (read by the
        #: thread at each step; off, cells are dropped when a job ends, as are those
        #: that free slots still hold, and every prompt is decoded whole).
        self.prefix_cache = prefix_cache
        #: Per slot, the tokens its KV cells hold while it is free.
        self.slot_tokens: list[list[int]] = []
        self._slot_used: list[int] = []  # per slot, when it was last given back
        self._ends = 0
        self._thread = threading.Thread(target=self.run, name="rawstream-scheduler", daemon=True)
        # counters: written by the scheduler thread, read by statistics()
        self.steps = 0
        self.decode_seconds = 0.0
        self.batch_tokens = 0
        self.prompt_tokens = 0  #: prompt tokens decoded
        self.prefix_cached_tokens = 0  #: prompt tokens whose KV was reused instead
        self.completion_tokens = 0
        self.cancelled = 0
        self.cancel_latency_sum = 0.0
        self.cancel_latency_max = 0.0
        self.decode_errors = 0

    # --- event loop side ------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; it loads the model, then calls ``on_ready``."""
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` for a slot (never blocks: the lock is only held briefly)."""
        with self._cond:
            self._inbox.append(job)
            self._dirty = True
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Ask for ``job`` to end before the next step."""
        with self._cond:
            self._cancels.append(job)
            self._dirty = True
            self._cond.notify()

    def wake(self) -> None:
        """Tell the thread that something changed (a consumer drained its buffer)."""
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def stop(self) -> None:
        """Cancel every job, free the model and end the thread (asynchronously)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    @property
    def busy_slots(self) -> int:
        """Slots holding a job."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._waiting) + len(self._inbox)

    # --- the thread -------------------------------------------------------------------

    def run(self) -> None:
        """Thread body: load, then step until stopped."""
        try:
            backend = self.backend = self._load()
        except BaseException as exc:
            self._post(self._on_ready, exc)
            self._post(self._on_stopped, None)
            return
        self._free_seqs = list(range(backend.slots))
        self.slot_tokens = [[] for _ in range(backend.slots)]
        self._slot_used = [0] * backend.slots
        self._post(self._on_ready, None)
        error: BaseException | None = None
        try:
            while self._step(backend):
                pass
        except BaseException as exc:  # an engine bug or a fatal llama.cpp error
            error = exc
        finally:
            self._shutdown(backend, error)

    def _step(self, backend: LlamaBackend) -> bool:
        with self._cond:
            if self._stopping:
                return False
            self._dirty = False
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            cancels, self._cancels = self._cancels, []
        report = StepReport(self.steps)
        now = time.perf_counter()
        for job in cancels:
            self._cancel(backend, job, now, report)
        if report.ended:
            # Acknowledge cancellations now rather than after a decode they are not in.
            self._deliver(report)
            report = StepReport(self.steps)
        self._admit(backend, now, report)
        in_batch, sitting_out = self._build_batch(backend)
        n_tokens = backend.batch_size
        if n_tokens == 0:
            self._deliver(report)
            with self._cond:
                while not self._dirty and not self._stopping:
                    self._cond.wait()
            return True
        for job in sitting_out:
            job.stream.flow.steps_paused += 1
        t0 = time.perf_counter()
        rc = backend.decode()
        t1 = time.perf_counter()
        self.steps += 1
        self.decode_seconds += t1 - t0
        self.batch_tokens += n_tokens
        report.step = self.steps
        if rc != 0:
            self._fail_batch(backend, in_batch, rc, t1, report)
        else:
            self._sample(backend, t1, report)
        self._deliver(report)
        return True

    def _admit(self, backend: LlamaBackend, now: float, report: StepReport) -> None:
        if not self.prefix_cache:
            self._forget_free_slots(backend)
        while self._waiting and self._free_seqs:
            job = self._waiting.popleft()
            job.seq = seq = self._pick_slot(job.prompt)
            self._free_seqs.remove(seq)
            # Keep the common prefix, but decode at least the prompt's last token.
            keep = 0
            if self.prefix_cache:
                keep = min(common_prefix(self.slot_tokens[seq], job.prompt), len(job.prompt) - 1)
            keep = backend.trim_sequence(seq, keep)
            self.slot_tokens[seq] = []  # the job's own record takes over until it ends
            job.n_past = job.n_prompt_done = keep
            self.prefix_cached_tokens += keep
            job.sampler = backend.new_sampler(job.request)
            job.started_at = now
            self._active.append(job)
            report.started.append((job.stream, self.steps))

    def _forget_free_slots(self, backend: LlamaBackend) -> None:
        """Drop the KV cells kept by free slots (the prefix cache was switched off)."""
        for seq in self._free_seqs:
            if self.slot_tokens[seq]:
                backend.free_sequence(seq)
                self.slot_tokens[seq] = []

    def _pick_slot(self, prompt: list[int]) -> int:
        """The free slot sharing the longest prefix with ``prompt``; else the LRU one."""
        best = min(self._free_seqs, key=self._slot_used.__getitem__)
        if not self.prefix_cache:
            return best
        best_len = 0
        for seq in self._free_seqs:
            n = common_prefix(self.slot_tokens[seq], prompt)
            if n > best_len:
                best, best_len = seq, n
        return best

    def _build_batch(self, backend: LlamaBackend) -> tuple[list[Job], list[Job]]:
        """Fill the batch; return the jobs in it and those that sit out (buffer full)."""
        backend.clear()
        in_batch: list[Job] = []
        sitting_out: list[Job] = []
        prefill: list[Job] = []
        for job in self._active:
            if job.prefilling:
                prefill.append(job)
            elif job.stream.flow.paused:
                sitting_out.append(job)
            else:
                job.out_index = backend.add(job.last_token, job.n_past, job.seq, True)
                job.n_past += 1
                in_batch.append(job)
        budget = min(PREFILL_CHUNK, backend.n_batch - backend.batch_size)
        for job in prefill:
            if budget <= 0:
                break
            start = job.n_prompt_done
            take = min(len(job.prompt) - start, budget)
            last = start + take == len(job.prompt)
            index = backend.add_run(job.prompt[start : start + take], job.n_past, job.seq, last)
            if last:
                job.out_index = index
            job.n_prompt_done += take
            job.n_past += take
            self.prompt_tokens += take
            budget -= take
            in_batch.append(job)
        return in_batch, sitting_out

    def _sample(self, backend: LlamaBackend, now: float, report: StepReport) -> None:
        finished: list[tuple[Job, FinishReason]] = []
        for job in self._active:
            if job.out_index < 0:
                continue
            token = backend.sample(job.sampler, job.out_index)
            index, job.out_index = job.out_index, -1
            if job.first_token_at is None:
                job.first_token_at = now
            if backend.is_end_of_generation(token):
                finished.append((job, FinishReason.STOP))
                continue
            job.generated += 1
            job.last_token = token
            job.output.append(token)
            self.completion_tokens += 1
            top = job.request.logprobs
            logprob = None if top is None else backend.logprobs(index, token, top)
            piece = job.detok.feed(backend.piece(token), logprob)
            if piece is not None:
                self._hand_over(job, piece, report)
            if job.detok.stopped:
                finished.append((job, FinishReason.STOP))
            elif job.generated == job.max_tokens or job.n_past >= backend.ctx_per_slot:
                finished.append((job, FinishReason.LENGTH))
        for job, reason in finished:
            if not job.detok.stopped:
                piece = job.detok.finish()
                if piece is not None:
                    self._hand_over(job, piece, report)
            result = Result(reason, self._usage(job), self._timings(job, now))
            self._end(backend, job)
            report.ended.append((job.stream, result, self.steps))

    @staticmethod
    def _hand_over(job: Job, piece: Piece, report: StepReport) -> None:
        """Count ``piece`` as sent and put it (and its logprobs) in the report."""
        job.stream.flow.sent += piece.tokens
        report.texts.append((job.stream, piece.text, piece.tokens))
        if piece.logprobs:
            report.logprobs.append((job.stream, piece.logprobs))

    def _cancel(self, backend: LlamaBackend, job: Job, now: float, report: StepReport) -> None:
        if job.done:
            return  # it finished before the cancellation got here
        if job.seq < 0:
            self._waiting.remove(job)
        requested = job.stream.cancel_requested_at
        latency = now - requested if requested is not None else 0.0
        self.cancelled += 1
        self.cancel_latency_sum += latency
        self.cancel_latency_max = max(self.cancel_latency_max, latency)
        timings = self._timings(job, now, cancel_latency=latency)
        result = Result(FinishReason.CANCELLED, self._usage(job), timings)
        self._end(backend, job)
        report.ended.append((job.stream, result, self.steps))

    def _fail_batch(
        self, backend: LlamaBackend, in_batch: list[Job], rc: int, now: float, report: StepReport
    ) -> None:
        """``llama_decode`` refused the batch: end the jobs in it with an error."""
        self.decode_errors += 1
        message = f"llama_decode failed with code {rc}"
        for job in in_batch:
            result = Result(FinishReason.ERROR, self._usage(job), self._timings(job, now), message)
            self._end(backend, job, keep_kv=False)  # the cells of a failed batch are in doubt
            report.ended.append((job.stream, result, self.steps))

    def _end(self, backend: LlamaBackend, job: Job, *, keep_kv: bool = True) -> None:
        """Mark ``job`` done and give its slot (sampler, sequence id) back.

        The slot keeps its KV cells for a later prompt with the same prefix and
        remembers their tokens; with ``keep_kv=False``, or the prefix cache off,
        they are dropped.
        """
        job.done = True
        job.out_index = -1
        if job.seq >= 0:
            if keep_kv and self.prefix_cache:
                self.slot_tokens[job.seq] = job.kv_tokens()
            else:
                backend.free_sequence(job.seq)
                self.slot_tokens[job.seq] = []
            self._ends += 1
            self._slot_used[job.seq] = self._ends
            backend.free_sampler(job.sampler)
            self._active.remove(job)
            self._free_seqs.append(job.seq)
            job.sampler = None
            job.seq = -1

    def _shutdown(self, backend: LlamaBackend, error: BaseException | None) -> None:
        with self._cond:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            self._cancels.clear()
        now = time.perf_counter()
        report = StepReport(self.steps)
        reason, message = FinishReason.CANCELLED, None
        if error is not None:
            reason, message = FinishReason.ERROR, f"engine failed: {error!r}"
        for job in [*self._active, *self._waiting]:
            result = Result(reason, self._usage(job), self._timings(job, now), message)
            self._end(backend, job)
            report.ended.append((job.stream, result, self.steps))
        self._waiting.clear()
        self._deliver(report)
        backend.close()
        self._post(self._on_stopped, error)

    @staticmethod
    def _usage(job: Job) -> Usage:
        return Usage(len(job.prompt), job.generated)

    @staticmethod
    def _timings(job: Job, now: float, cancel_latency: float | None = None) -> Timings:
        started = job.started_at if job.started_at is not None else now
        first = job.first_token_at if job.first_token_at is not None else now
        return Timings(
            queued=started - job.submitted_at,
            prompt=first - started,
            generation=now - first,
            cancel_latency=cancel_latency,
        )

    def _deliver(self, report: StepReport) -> None:
        if report.logprobs:
            self._post(self._apply_with_logprobs, report)
        elif report:
            self._post(self._on_report, report)

    def _apply_with_logprobs(self, report: StepReport) -> None:
        """On the loop: give the streams their logprobs, then the rest of the report.

        One callback, so no reader runs in between: each stream's next delta gets
        the logprobs together with the text that ``on_report`` pushes.
        """
        for stream, logprobs in report.logprobs:
            stream.push_logprobs(logprobs)
        self._on_report(report)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the event loop is closed; nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)
