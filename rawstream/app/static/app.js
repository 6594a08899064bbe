// rawstream chat page: a plain ES module, no build step, nothing from other origins.
//
// Theory of operation
// -------------------
// The page keeps the conversation in `history` and, for every message you send,
// asks the server for a reply over one of two transports:
//
//   SSE (default), resumable:
//     1. POST /v1/generations with the whole history   -> 201 {"id", "events_url"}
//     2. new EventSource(events_url)                   -> text/event-stream
//          id: 1  data: {"text": "Hel"}                   (one event per delta)
//          id: 2  data: {"text": "lo"}
//          id: 3  event: done  data: {"finish_reason", "usage"}   (or event: error)
//     3. DELETE /v1/generations/{id}                   (the Stop button)
//   The generation belongs to the server, not to the HTTP connection. When the
//   connection drops, EventSource reconnects by itself and sends the id of the last
//   event it saw as `Last-Event-ID`; the server replays exactly what was missed. This
//   page still appends text only for ids it has not seen, so a replay can never
//   duplicate text.
//
//   WebSocket (/v1/ws, docs/ws-protocol.md): one socket carries many streams.
//     > {"type":"generate","id":7, ...chat body}      < {"type":"delta","id":7,"seq":0,"text":...}
//     > {"type":"cancel","id":7}                       < {"type":"done"|"error","id":7,...}
//   The server cancels every stream of a socket when the socket closes, so a reply
//   cut by a dropped socket cannot be resumed. The page keeps the partial text, marks
//   the reply "interrupted" and offers Retry (a new request); the socket itself is
//   reopened in the background with exponential backoff.
//
// Model output is untrusted text: it only ever reaches the DOM through
// `textContent` (never innerHTML), and the page's Content-Security-Policy forbids
// inline script as a second line of defence.

"use strict";

// ---------------------------------------------------------------------------------
// Elements and settings
// ---------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  conn: $("conn"),
  connText: $("conn-text"),
  transcript: $("transcript"),
  empty: $("empty"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
  apiKey: $("api-key"),
  system: $("system"),
  maxTokens: $("max-tokens"),
  temperature: $("temperature"),
  seed: $("seed"),
  transportHelp: $("transport-help"),
  settings: $("settings-panel"),
  newChat: $("new-chat"),
};

// The API key lives in sessionStorage at most: gone when the tab closes, never
// written to localStorage or a cookie.
const KEY_STORAGE = "rawstream.apiKey";
ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
ui.apiKey.addEventListener("change", () => {
  const key = ui.apiKey.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  checkServer();
  if (transport() === "ws") wsClient.reconnectNow();
});

function apiKey() {
  return ui.apiKey.value.trim();
}

/** Headers for fetch(): the key travels as `Authorization: Bearer` (RFC 6750). */
function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function transport() {
  return document.querySelector('input[name="transport"]:checked').value;
}

/** The chat completion body for the current history and settings. */
function requestBody() {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const turn of history) {
    if (turn.content) messages.push({ role: turn.role, content: turn.content });
  }
  const body = { messages };
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
  const temperature = parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const seed = parseInt(ui.seed.value, 10);
  if (Number.isFinite(seed) && seed >= 0) body.seed = seed;
  return body;
}

// On a phone the settings start folded so the chat gets the screen.
if (window.matchMedia("(max-width: 860px)").matches) ui.settings.open = false;

// ---------------------------------------------------------------------------------
// Connection state (the pill in the header)
// ---------------------------------------------------------------------------------

/** state: connecting | ready | streaming | reconnecting | offline | error */
function setConn(state, text) {
  ui.conn.dataset.state = state;
  ui.connText.textContent = text;
}

/** The pill when nothing streams: what we last learned about the server. */
let serverState = { state: "connecting", text: "Connecting…" };
function showServerState() {
  if (!active) setConn(serverState.state, serverState.text);
}

/**
 * Ask the server how it is: GET /health (public: is the model loaded?) and, to
 * find out whether a key is needed, GET /v1/models with the key we have.
 */
async function checkServer() {
  let health;
  try {
    health = await fetch("/health", { cache: "no-store" });
  } catch {
    serverState = { state: "offline", text: "Server unreachable" };
    showServerState();
    setTimeout(checkServer, 5000);
    return;
  }
  const info = await health.json().catch(() => ({}));
  if (info.model) ui.model.textContent = `model: ${info.model}`;
  if (health.status === 503) {
    serverState = { state: "connecting", text: "Model loading…" };
    showServerState();
    setTimeout(checkServer, 2000);
    return;
  }
  const models = await fetch("/v1/models", { headers: authHeaders() }).catch(() => null);
  if (models && models.status === 401) {
    serverState = {
      state: "error",
      text: apiKey() ? "API key rejected" : "API key required",
    };
  } else if (transport() === "sse") {
    serverState = { state: "ready", text: "Ready" };
  }
  showServerState();
}

/**
 * A readable sentence for a failed HTTP response (OpenAI error shape:
 * {"error": {"message", "type", "code"}}), with the Retry-After of a 503.
 */
async function describeHTTPError(response) {
  const body = await response.json().catch(() => null);
  const message = body && body.error && body.error.message;
  if (response.status === 401) {
    return apiKey()
      ? "The server rejected the API key. Check it under Settings."
      : "This server requires an API key. Enter it under Settings.";
  }
  if (response.status === 503 || response.status === 429) {
    // 503 + Retry-After (RFC 9110 section 10.2.3): every slot is busy and the wait
    // queue is full, or the model is still loading. 429 + Retry-After (RFC 6585
    // section 4): this caller has too many generations nobody watches.
    const retry = parseInt(response.headers.get("Retry-After") || "", 10);
    const when = Number.isFinite(retry) ? `in ${retry} s` : "in a moment";
    const what = response.status === 503 ? "The server is busy" : "Too many requests";
    return `${what} (${message || "overloaded"}). Try again ${when}.`;
  }
  return `The server answered ${response.status}: ${message || response.statusText}`;
}

// ---------------------------------------------------------------------------------
// The transcript
// ---------------------------------------------------------------------------------

/** Turns sent to the model: {role, content}. */
const history = [];
/** The reply being generated, if any (one at a time). */
let active = null;

function nearBottom() {
  const t = ui.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function scrollToEnd() {
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function addMessage(role, text) {
  ui.empty.hidden = true;
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text; // text, never markup
  li.append(who, body);
  ui.transcript.append(li);
  scrollToEnd();
  return li;
}

/**
 * One assistant reply on the page: its text, its timing, and how it ended.
 * Transports call append(), finish(), fail(), interrupt() and phase().
 */
class Reply {
  constructor(turn) {
    this.turn = turn; // the history entry this reply fills in
    this.el = addMessage("assistant", "");
    this.el.classList.add("streaming");
    this.textEl = this.el.querySelector(".text");
    // The streaming text is a live region; aria-busy holds the announcement until
    // the reply is complete instead of reading every token.
    this.textEl.setAttribute("aria-live", "polite");
    this.textEl.setAttribute("aria-busy", "true");
    this.textEl.id = `reply-${Reply.count++}`;
    this.meta = document.createElement("p");
    this.meta.className = "meta";
    this.notice = document.createElement("p");
    this.notice.className = "notice";
    this.notice.hidden = true;
    this.el.append(this.notice, this.meta);
    this.text = "";
    this.via = transport() === "ws" ? "WebSocket" : "SSE";
    this.started = performance.now();
    this.firstAt = null;
    this.ended = false;
    this.stopping = false;
    this.cancel = null; // set by the transport once the server knows the generation
    this.showMeta("waiting for the first token…");
  }

  /** New text from the model (already de-duplicated by the transport). */
  append(text) {
    if (this.ended || !text) return;
    const follow = nearBottom();
    if (this.firstAt === null) {
      this.firstAt = performance.now();
      this.showMeta(`first token ${fmtMs(this.firstAt - this.started)} · streaming…`);
    }
    this.text += text;
    this.turn.content = this.text;
    // textContent: model output is shown as text; `<script>` stays the characters
    // "<script>". (Appending a Text node would also do; this keeps one node.)
    this.textEl.textContent = this.text;
    if (follow) scrollToEnd();
  }

  /** Transport progress: "reconnecting", "streaming". */
  phase(name, detail) {
    if (this.ended) return;
    this.el.dataset.phase = name;
    if (name === "reconnecting") {
      this.say(detail || "Connection lost: reconnecting to resume this reply…", "warn");
      setConn("reconnecting", "Reconnecting…");
    } else if (name === "streaming") {
      if (this.el.dataset.resumed === "1") this.say("Resumed after a dropped connection.", "ok");
      setConn("streaming", transport() === "ws" ? "Streaming (WebSocket)" : "Streaming (SSE)");
    }
  }

  /** The normal end: {finish_reason, usage}. */
  finish(done) {
    if (this.ended) return;
    const reason = done.finish_reason;
    const label =
      reason === "cancelled" ? "stopped" : reason === "length" ? "max tokens reached" : reason;
    this.end(reason === "cancelled" ? "stopped" : "done", done.usage, label);
    if (reason === "cancelled") this.say("Stopped. The server freed the slot.", "info");
  }

  /** A failure before or during the reply; `retry` offers to send it again. */
  fail(message, { retry = true } = {}) {
    if (this.ended) return;
    this.end("error", null, "failed");
    this.say(message, "error", retry);
  }

  /** The connection went away mid-reply and the reply cannot be resumed. */
  interrupt(message) {
    if (this.ended) return;
    this.end("interrupted", null, "interrupted");
    this.say(message, "warn", true);
  }

  end(state, usage, label) {
    this.ended = true;
    this.el.classList.remove("streaming");
    this.el.dataset.state = state;
    this.textEl.setAttribute("aria-busy", "false");
    const end = performance.now();
    const parts = [];
    if (this.firstAt !== null) parts.push(`first token ${fmtMs(this.firstAt - this.started)}`);
    const tokens = usage ? usage.completion_tokens : null;
    if (tokens !== null) parts.push(`${tokens} token${tokens === 1 ? "" : "s"}`);
    // Decode rate: the tokens after the first over the time after the first.
    if (tokens > 1 && this.firstAt !== null && end > this.firstAt) {
      parts.push(`${((tokens - 1) / ((end - this.firstAt) / 1000)).toFixed(1)} tokens/s`);
    }
    parts.push(label, this.via);
    this.showMeta(parts.join(" · "));
    if (!this.text) this.turn.content = ""; // an empty reply is not sent back
    finishActive(this);
  }

  showMeta(text) {
    this.meta.textContent = text;
  }

  say(message, kind, retry = false) {
    this.notice.hidden = false;
    this.notice.className = `notice ${kind}`;
    this.notice.setAttribute("role", kind === "error" ? "alert" : "status");
    this.notice.textContent = message;
    if (retry) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn small";
      button.textContent = "Retry";
      button.addEventListener("click", () => retryReply(this));
      this.notice.append(" ", button);
    }
  }
}
Reply.count = 0;

function fmtMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// ---------------------------------------------------------------------------------
// Sending, stopping, retrying
// ---------------------------------------------------------------------------------

function startReply() {
  const turn = { role: "assistant", content: "" };
  const body = requestBody(); // the history *before* this reply
  history.push(turn);
  const reply = new Reply(turn);
  active = reply;
  ui.send.hidden = true;
  ui.stop.hidden = false;
  ui.stop.disabled = false;
  setConn("connecting", "Starting…");
  if (transport() === "ws") wsClient.generate(body, reply);
  else sseGenerate(body, reply);
}

function finishActive(reply) {
  if (active !== reply) return;
  active = null;
  ui.stop.hidden = true;
  ui.send.hidden = false;
  if (ui.conn.dataset.state !== "offline") checkServer();
}

function send() {
  const text = ui.message.value.trim();
  if (!text || active) return;
  history.push({ role: "user", content: text });
  addMessage("user", text);
  ui.message.value = "";
  startReply();
}

function retryReply(reply) {
  if (active) return;
  const index = history.indexOf(reply.turn);
  if (index >= 0) history.splice(index, 1);
  reply.el.remove();
  startReply();
}

function stop() {
  const reply = active;
  if (!reply || reply.stopping) return;
  reply.stopping = true;
  ui.stop.disabled = true;
  reply.showMeta("stopping…");
  // The reply ends when the server confirms (done with finish_reason "cancelled");
  // text already on its way may still arrive until then.
  // Before the server has the generation, end the reply here; the transport
  // cancels it on the server as soon as it learns its id.
  if (reply.cancel) reply.cancel();
  else reply.fail("Stopped before the reply started.");
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.message.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; never while an IME is composing text.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", stop);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && active) stop();
});
ui.newChat.addEventListener("click", () => {
  if (active) stop();
  history.length = 0;
  for (const li of [...ui.transcript.querySelectorAll(".msg")]) li.remove();
  ui.empty.hidden = false;
  ui.message.focus();
});

// ---------------------------------------------------------------------------------
// Transport 1: resumable generations over Server-Sent Events
// ---------------------------------------------------------------------------------

/** How long to keep reconnecting before calling the reply lost. The server cancels
 *  a running generation nobody watches after --unwatched-timeout (10 s by default)
 *  and keeps its events for --resume-window (30 s) after that, so a page that comes
 *  back in time still gets every event and the end. */
const SSE_GIVE_UP_MS = 45000;

async function sseGenerate(body, reply) {
  // Step 1: submit. Errors here come with a status: 401, 400, 503 + Retry-After.
  let response;
  try {
    response = await fetch("/v1/generations", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
  } catch {
    serverState = { state: "offline", text: "Server unreachable" };
    reply.fail(`Cannot reach the server at ${location.host}. Is rawstream running?`);
    return;
  }
  if (response.status !== 201) {
    reply.fail(await describeHTTPError(response));
    return;
  }
  const { id, events_url: eventsUrl } = await response.json();
  let source = null; // the current EventSource
  let lastId = 0; // the highest event id applied to the page
  let lostAt = null; // when the connection dropped, while reconnecting
  reply.el.dataset.generation = id;
  reply.cancel = () => sseCancel(id, reply, source);
  if (reply.ended) {
    reply.cancel(); // Stop was pressed while the POST was on its way
    return;
  }

  // Step 2: follow the events. EventSource can set no header, so the key goes in
  // the query string (the server accepts ?api_key= for exactly this case).
  const url = new URL(eventsUrl, location.href);
  if (apiKey()) url.searchParams.set("api_key", apiKey());

  const open = (resumeFrom) => {
    // A fresh EventSource starts without Last-Event-ID; the query parameter tells
    // the server where to resume. Its own reconnects send the header instead.
    if (resumeFrom > 0) url.searchParams.set("last_event_id", String(resumeFrom));
    source = new EventSource(url);
    source.onopen = () => {
      lostAt = null;
      reply.phase("streaming");
    };
    // Unnamed events ("message"): one delta each, with `id:`.
    source.onmessage = (event) => {
      if (!isNew(event)) return;
      reply.append(JSON.parse(event.data).text);
    };
    source.addEventListener("done", (event) => {
      if (!isNew(event)) return;
      source.close();
      reply.finish(JSON.parse(event.data));
    });
    // Careful: "error" is two different things on an EventSource. The server's
    // `event: error` arrives as a MessageEvent with data; a connection failure is a
    // plain Event without data. One listener sees both.
    source.addEventListener("error", (event) => {
      if (event instanceof MessageEvent && event.data !== undefined) {
        // The generation failed, or this viewer's stream ended without the
        // generation's end (shutdown, or it fell behind the replay buffer). Those
        // events carry no id, and an EventSource keeps the previous lastEventId for
        // them, so no id check here: an error event is always the last one.
        source.close();
        const error = JSON.parse(event.data).error || {};
        const why =
          error.code === "shutting_down"
            ? "The server is shutting down; this reply was cut short."
            : error.code === "events_expired"
              ? "This reply fell too far behind to be resumed; it is incomplete."
              : `The generation failed: ${error.message || "unknown error"}`;
        reply.fail(why);
        return;
      }
      connectionError();
    });
  };

  // Dedupe by event id: apply an event only if its id is above every id applied so
  // far. The server replays from Last-Event-ID, so this should never drop anything;
  // it guarantees that no replay, proxy retry or overlap can repeat text.
  const isNew = (event) => {
    const eventId = Number(event.lastEventId);
    if (!Number.isInteger(eventId) || eventId <= lastId) return false;
    lastId = eventId;
    return true;
  };

  const connectionError = async () => {
    if (reply.ended) {
      source.close();
      return;
    }
    if (source.readyState === EventSource.CONNECTING) {
      // The browser reconnects by itself (after the server's `retry:` or ~3 s) and
      // will send Last-Event-ID: lastId. We only report it, and give up eventually.
      lostAt = lostAt ?? performance.now();
      reply.el.dataset.resumed = "1";
      if (performance.now() - lostAt > SSE_GIVE_UP_MS) {
        source.close();
        serverState = { state: "offline", text: "Server unreachable" };
        reply.interrupt("Lost the connection to the server; the reply is incomplete.");
      } else {
        reply.phase("reconnecting");
      }
      return;
    }
    // CLOSED: the browser gave up because a (re)connection got a response that is
    // not a 200 event stream: 204 (nothing more: the generation ended), 401, 404 or
    // 410 (the generation is gone), 503. EventSource does not expose the status, so
    // ask once with fetch and read only the status line.
    source.close();
    const probe = new URL(eventsUrl, location.href);
    probe.searchParams.set("last_event_id", String(lastId));
    const abort = new AbortController();
    let status = 0;
    let text = "";
    try {
      const r = await fetch(probe, { headers: authHeaders(), signal: abort.signal });
      status = r.status;
      text = r.ok ? "" : await describeHTTPError(r);
    } catch {
      status = 0;
    } finally {
      abort.abort(); // a 200 would be a live stream: we only wanted its status
    }
    if (status === 200) open(lastId); // transient: follow again from where we are
    else if (status === 204) reply.finish({ finish_reason: "stop", usage: null });
    else if (status === 404 || status === 410)
      reply.interrupt("The server no longer has this reply (it expired or restarted).");
    else if (status === 0) reply.interrupt("Lost the connection to the server.");
    else reply.fail(text);
  };

  open(0);
}

/** Stop: DELETE the generation. Its stream then ends with done/"cancelled". */
async function sseCancel(id, reply, source) {
  try {
    const r = await fetch(`/v1/generations/${encodeURIComponent(id)}`, {
      method: "DELETE",
      headers: authHeaders(),
    });
    if (r.ok) return; // the `done` event will end the reply
    if (source) source.close();
    reply.fail(await describeHTTPError(r), { retry: false });
  } catch {
    // The server is unreachable: nobody can confirm. Stop following.
    if (source) source.close();
    reply.interrupt("Stopped locally; the server could not be reached to cancel.");
  }
}

// ---------------------------------------------------------------------------------
// Transport 2: many streams over one WebSocket (/v1/ws)
// ---------------------------------------------------------------------------------

class WSClient {
  constructor() {
    this.ws = null;
    this.streams = new Map(); // id -> {reply, seq}: live streams on this socket
    this.nextId = 1;
    this.backoff = 1000;
    this.timer = null;
    this.waiters = []; // generate() calls waiting for the socket to open
    this.wanted = false; // keep a socket open (WebSocket mode is selected)
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/v1/ws`;
  }

  /** Open the socket (idempotent). The key rides as a subprotocol: browsers cannot
   *  set headers on a WebSocket, but they can offer `bearer.<key>`. The server
   *  selects "rawstream" and never echoes the key. */
  connect() {
    this.wanted = true;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    clearTimeout(this.timer);
    const protocols = apiKey() ? ["rawstream", `bearer.${apiKey()}`] : ["rawstream"];
    let ws;
    try {
      ws = new WebSocket(this.url(), protocols);
    } catch {
      // SyntaxError: the key has characters a subprotocol name cannot hold.
      this.rejectWaiters(this.waiters.splice(0), "This API key cannot be sent over a WebSocket.");
      return;
    }
    this.ws = ws;
    let opened = false;
    if (!active) setConn("connecting", "Opening WebSocket…");
    ws.onopen = () => {
      opened = true;
      this.backoff = 1000;
      serverState = { state: "ready", text: "WebSocket open" };
      showServerState();
      for (const w of this.waiters.splice(0)) w.resolve();
    };
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => this.closed(ws, event, opened);
  }

  /** Close on purpose (switching back to SSE). */
  disconnect() {
    this.wanted = false;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "switched transport");
  }

  /** Reopen at once (a new key was entered). */
  reconnectNow() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "new key");
    this.backoff = 1000;
    this.connect();
  }

  waitOpen() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) return Promise.resolve();
    const waiting = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.connect();
    return waiting;
  }

  rejectWaiters(waiters, message) {
    for (const w of waiters) w.reject(new Error(message));
  }

  async generate(body, reply) {
    try {
      await this.waitOpen();
    } catch (error) {
      reply.fail(error.message);
      return;
    }
    if (reply.ended) return; // stopped while the socket was opening
    const id = this.nextId++;
    this.streams.set(id, { reply, seq: 0 });
    reply.el.dataset.stream = String(id);
    reply.cancel = () => this.send({ type: "cancel", id });
    this.send({ type: "generate", id, ...body });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** Dispatch one server message to its stream by `id`. */
  receive(message) {
    const stream = this.streams.get(message.id);
    if (!stream) return; // a stream we no longer follow, or {"type":"pong"}
    const { reply } = stream;
    if (message.type === "delta") {
      // seq counts a stream's deltas from 0 without gaps: a lower one is a repeat.
      if (message.seq < stream.seq) return;
      stream.seq = message.seq + 1;
      if (reply.firstAt === null) reply.phase("streaming");
      reply.append(message.text);
    } else if (message.type === "done") {
      this.streams.delete(message.id);
      reply.finish(message);
    } else if (message.type === "error") {
      this.streams.delete(message.id);
      const error = message.error || {};
      reply.fail(
        error.code === "overloaded"
          ? "The server is busy: every slot and the queue are full. Try again shortly."
          : `The generation failed: ${error.message || error.code || "unknown error"}`,
      );
    }
  }

  /** The socket closed: end its streams, say why, and reopen later. */
  closed(ws, event, opened) {
    if (ws !== this.ws) return; // a socket we closed on purpose
    this.ws = null;
    // Take what this socket owed synchronously: a new socket may start meanwhile.
    const waiters = this.waiters.splice(0);
    const replies = [...this.streams.values()].map((s) => s.reply);
    this.streams.clear();
    if (this.wanted) {
      // Exponential backoff, 1 s to 30 s, so a restarting server is not hammered.
      this.timer = setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 30000);
    }
    this.explain(event, opened).then(({ why, state, text }) => {
      this.rejectWaiters(waiters, why);
      for (const reply of replies) {
        reply.interrupt(
          `${why} The server cancels a socket's streams when it closes, so this reply ` +
            "cannot be resumed; Retry asks again.",
        );
      }
      serverState = { state, text };
      showServerState();
    });
  }

  /** Why did the socket close? A failed handshake (e.g. 401 before the upgrade)
   *  shows up only as close code 1006, so ask the server over plain HTTP. */
  async explain(event, opened) {
    const retrying = { state: "offline", text: "WebSocket closed, retrying…" };
    if (event.code === 1001) {
      return { why: "The server is shutting down (close 1001).", ...retrying };
    }
    if (opened && event.code !== 1006) {
      const reason = event.reason ? `: ${event.reason}` : "";
      return { why: `The WebSocket closed (code ${event.code}${reason}).`, ...retrying };
    }
    const models = await fetch("/v1/models", { headers: authHeaders() }).catch(() => null);
    if (!models) {
      return { why: `Cannot reach the server at ${location.host}.`, ...retrying };
    }
    if (models.status === 401) {
      const text = apiKey() ? "API key rejected" : "API key required";
      return { why: await describeHTTPError(models), state: "error", text };
    }
    return { why: "The WebSocket connection was lost (code 1006).", ...retrying };
  }
}

const wsClient = new WSClient();

function applyTransport() {
  if (transport() === "ws") {
    ui.transportHelp.textContent =
      "One socket, many streams: /v1/ws. A dropped socket ends its replies.";
    wsClient.connect();
  } else {
    ui.transportHelp.textContent = "Resumable: POST /v1/generations, then EventSource.";
    wsClient.disconnect();
  }
  checkServer();
}
for (const radio of document.querySelectorAll('input[name="transport"]')) {
  radio.addEventListener("change", applyTransport);
}
applyTransport(); // the browser may have restored the WebSocket choice
