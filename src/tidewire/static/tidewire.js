// @ts-check
/**
 * tidewire browser client: a plain ES module (no build step, no dependencies)
 * that speaks wire protocol v1 (docs/protocol.md) and reconnects by itself.
 *
 *     import {TidewireClient} from "/tidewire.js";
 *     const client = new TidewireClient("/ws", {token: () => fetchToken()});
 *     await client.connect();
 *     await client.join("lobby");
 *     client.on("chat", (msg) => console.log(msg.user, msg.text));
 *     client.send({type: "chat", room: "lobby", text: "hi"});
 *
 * What it does for the application (docs/client-js.md has the details):
 *
 * - round-robin failover over several URLs, exponential back-off with full
 *   jitter, and the close-code taxonomy of docs/protocol.md section 11
 *   (reconnect now / back-off / fetch a fresh token / stop);
 * - `auth` after the `connection` hello, token refresh before expiry;
 * - an application-level ping (browsers cannot send protocol pings) whose
 *   missing pong marks the connection dead;
 * - rooms rejoined and channels resubscribed after a reconnect, with
 *   `since` recovery: missed publications delivered in order, duplicates
 *   dropped, `recovery_failed` when the gap cannot be filled;
 * - a bounded offline queue: messages sent while disconnected are flushed
 *   in order after the reconnect, and a full queue throws `OfflineQueueFull`
 *   instead of dropping anything;
 * - RPC in both directions with timeouts and error codes.
 *
 * @module tidewire
 */

/** The subprotocol of wire protocol v1. */
export const SUBPROTOCOL = "tidewire.v1";

/** How often the offline queue is retried while the socket's `bufferedAmount` is high (ms). */
const DRAIN_POLL_MS = 50;

/** Room and channel names (docs/protocol.md section 4). */
const NAME = /^[A-Za-z0-9_.:@/#=+-]{1,255}$/;

/**
 * Reserved types the client tracks itself: send() refuses them so that the
 * rooms, subscriptions and credentials it restores after a reconnect stay true.
 */
const MANAGED_TYPES = new Set(["auth", "join", "leave", "subscribe", "unsubscribe"]);

/** Server types handled inside the client: not re-emitted as events of their own. */
const INTERNAL_TYPES = new Set([
  "connection",
  "auth",
  "pong",
  "subscribed",
  "unsubscribed",
  "publish",
  "published",
  "rpc",
  "rpc_result",
  "error",
]);

/** Events of the client itself; an application type of the same name arrives on 'message' only. */
const CLIENT_EVENTS = new Set(["state", "message", "error", "close", "open", "recovery_failed"]);

/**
 * @typedef {{type: string, [field: string]: any}} Envelope
 *   One wire-protocol message: a JSON object with a string `type`.
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} ClientState
 * @typedef {"reconnect" | "backoff" | "reauth" | "stop"} CloseAction
 * @typedef {string | (() => string | Promise<string>)} TokenSource
 *   A token, or a (possibly async) function returning a fresh one.
 * @typedef {object} ReconnectOptions
 * @property {number} [base] first back-off ceiling (ms); doubles per attempt
 * @property {number} [cap] largest back-off ceiling (ms)
 * @property {number} [maxAttempts] consecutive attempts before giving up
 * @property {number} [stableAfter] ms a connection must stay up to reset the attempt count
 * @typedef {object} OfflineQueueOptions
 * @property {number} [maxMessages] messages held while not connected
 * @property {number} [maxBytes] UTF-8 bytes of JSON held while not connected
 * @typedef {object} ClientOptions
 * @property {TokenSource | null} [token] sent in an `auth` message after each connect
 * @property {number | null} [tokenRefresh] fraction of a token's remaining lifetime after
 *   which a token function is called again and the token refreshed in place (null: never)
 * @property {string[]} [protocols] subprotocols offered
 * @property {ReconnectOptions} [reconnect]
 * @property {number | null} [pingInterval] ms between app-level pings while open (null: none)
 * @property {number} [pongTimeout] ms without the pong before the connection counts as dead
 * @property {number | null} [openTimeout] ms for the handshake, hello and auth together
 * @property {number} [callTimeout] default ms for call() and publish()
 * @property {OfflineQueueOptions} [offlineQueue]
 * @property {number} [maxBufferedAmount] socket bytes in flight above which sends wait in the queue
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one)
 * @typedef {object} ResolvedOptions
 * @property {TokenSource | null} token
 * @property {number | null} tokenRefresh
 * @property {string[]} protocols
 * @property {Required<ReconnectOptions>} reconnect
 * @property {number | null} pingInterval
 * @property {number} pongTimeout
 * @property {number | null} openTimeout
 * @property {number} callTimeout
 * @property {Required<OfflineQueueOptions>} offlineQueue
 * @property {number} maxBufferedAmount
 * @property {typeof WebSocket | undefined} WebSocket
 * @typedef {object} CloseInfo
 * @property {number} code the close code (1006 when the connection dropped or was declared dead)
 * @property {string} reason
 * @property {CloseAction} action what the client does next
 * @property {boolean} wasClean whether a closing handshake took place
 * @typedef {object} OpenInfo
 * @property {string} id the connection id from the `connection` hello
 * @property {string | null} user the authenticated user, if any
 * @property {string} url the URL connected to
 * @property {boolean} reconnected false for the first connection, true afterwards
 * @typedef {object} PublicationInfo
 * @property {string} channel
 * @property {number} offset
 * @property {string | null} epoch
 * @typedef {(payload: any, info: PublicationInfo) => void} PublicationCallback
 * @typedef {(params: any, envelope: Envelope) => any} RpcHandler
 * @typedef {"call" | "publish" | "join" | "leave" | "subscribe" | "unsubscribe"} RequestKind
 * @typedef {object} Pending
 * @property {RequestKind} kind
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {ReturnType<typeof setTimeout> | null} timer
 * @property {boolean} sent written to the current socket (a drop then fails it)
 * @property {string} [target] the room or channel
 * @property {boolean} [since] a subscribe that asked for recovery
 * @typedef {object} QueueEntry
 * @property {string} text
 * @property {number} bytes
 * @property {"app" | "request" | "state"} kind state entries are re-created after a reconnect
 * @property {number | null} id
 * @typedef {{resolve: (value: any) => void, reject: (error: Error) => void}} Waiter
 * @typedef {object} RoomEntry
 * @property {Waiter[]} waiters join() calls waiting for `joined`
 * @property {number | null} reqId the join in flight on this connection
 * @typedef {object} Subscription
 * @property {PublicationCallback} fn
 * @typedef {object} ChannelEntry
 * @property {Set<Subscription>} subs
 * @property {Waiter[]} waiters subscribe() calls waiting for `subscribed`
 * @property {string | null} epoch
 * @property {number} offset last offset delivered
 * @property {boolean} subscribed
 * @property {number | null} reqId the subscribe in flight on this connection
 * @property {Envelope[]} buffer live publications held back while a subscribe is in flight
 */

/** Defaults of every option (docs/client-js.md explains each one). */
export const DEFAULTS = Object.freeze({
  token: null,
  // 80% of the remaining lifetime, as docs/protocol.md section 3.4 suggests, leaves
  // room for clock skew between browser and server.
  tokenRefresh: 0.8,
  protocols: Object.freeze([SUBPROTOCOL]),
  reconnect: Object.freeze({base: 500, cap: 30000, maxAttempts: Infinity, stableAfter: 30000}),
  // Below the server's 300 s idle timeout and typical 30-60 s proxy/NAT idle limits.
  pingInterval: 25000,
  pongTimeout: 10000,
  openTimeout: 10000,
  // The server's own rpc_timeout is 10 s.
  callTimeout: 10000,
  offlineQueue: Object.freeze({maxMessages: 100, maxBytes: 1024 * 1024}),
  // The server closes a client with more than 1 MiB unread (4001); the same bound outbound.
  maxBufferedAmount: 1024 * 1024,
});

// ---------------------------------------------------------------- errors

/** An error of the client or the server; `code` is machine-readable. */
export class TidewireError extends Error {
  /**
   * @param {string} message for humans
   * @param {string} code e.g. "timeout", "disconnected", "closed" or the server's error code
   * @param {Record<string, any>} [details] extra facts (`envelope`, `room`, `channel`, ...)
   */
  constructor(message, code, details = {}) {
    super(message);
    this.name = "TidewireError";
    /** @type {string} */
    this.code = code;
    /** @type {Envelope | undefined} the server message behind the error, if any */
    this.envelope = details.envelope;
    /** @type {Record<string, any>} */
    this.details = details;
  }
}

/** Thrown by send() (or rejected by call()/publish()) when the offline queue is full. */
export class OfflineQueueFull extends TidewireError {
  /**
   * @param {"messages" | "bytes"} what which limit was hit
   * @param {number} limit its value
   * @param {number} queued how many messages/bytes are queued
   * @param {number} size bytes of the refused message
   */
  constructor(what, limit, queued, size) {
    const name = what === "messages" ? "maxMessages" : "maxBytes";
    super(
      `OfflineQueueFull: offlineQueue.${name}=${limit} reached (${queued} ${what} queued, ` +
        `message of ${size} bytes refused); wait for the 'open' event or raise the limit`,
      "offline_queue_full",
      {what, limit, queued, size},
    );
    this.name = "OfflineQueueFull";
    this.what = what;
    this.limit = limit;
    this.queued = queued;
    this.size = size;
  }
}

// ------------------------------------------------------------- helpers

/** @type {Record<number, CloseAction>} */
const STANDARD_ACTIONS = {
  1000: "stop",
  1001: "reconnect",
  1002: "stop",
  1003: "stop",
  1007: "stop",
  1008: "stop",
  1009: "stop",
  1010: "stop",
  1012: "reconnect",
};

/**
 * What a client does after a close with `code` (docs/protocol.md section 11;
 * the twin of `tidewire.protocol.close.action_for`).
 * @param {number} code
 * @returns {CloseAction}
 */
export function actionFor(code) {
  const action = STANDARD_ACTIONS[code];
  if (action) return action;
  if (code >= 4000 && code <= 4099) return "reconnect";
  if (code >= 4200 && code <= 4299) return "reauth";
  if (code >= 4500 && code <= 4999) return "stop";
  return "backoff";
}

/**
 * The back-off delay before attempt `attempt` (0-based): uniformly random in
 * [0, min(cap, base * 2^attempt)) ("full jitter"), so clients dropped together
 * do not come back together.
 * @param {number} attempt
 * @param {number} base
 * @param {number} cap
 * @param {() => number} [random]
 * @returns {number}
 */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * ceiling);
}

/**
 * UTF-8 length of a string produced by JSON.stringify (which escapes lone surrogates).
 * @param {string} text
 * @returns {number}
 */
export function utf8Length(text) {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    // A surrogate pair is 4 bytes for 2 code units: one extra byte each.
    bytes += c < 0x800 || (c >= 0xd800 && c <= 0xdfff) ? 1 : 2;
  }
  return bytes;
}

/**
 * An absolute ws:// or wss:// URL; http(s) and relative URLs (against the page) are converted.
 * @param {string | URL} value
 * @returns {string}
 */
function resolveUrl(value) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const url = new URL(String(value), base);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`not a WebSocket URL: ${value}`);
  }
  return url.href;
}

/**
 * @param {ClientOptions} options
 * @returns {ResolvedOptions}
 */
function resolveOptions(options) {
  const o = {...DEFAULTS, ...options};
  const reconnect = {...DEFAULTS.reconnect, ...(options.reconnect || {})};
  const offlineQueue = {...DEFAULTS.offlineQueue, ...(options.offlineQueue || {})};
  if (o.token != null && typeof o.token !== "string" && typeof o.token !== "function") {
    throw new TypeError("options.token must be a string or a function returning one");
  }
  return {
    token: o.token ?? null,
    tokenRefresh: o.tokenRefresh ?? null,
    protocols: [...(o.protocols || [])],
    reconnect,
    pingInterval: o.pingInterval || null,
    pongTimeout: o.pongTimeout,
    openTimeout: o.openTimeout || null,
    callTimeout: o.callTimeout,
    offlineQueue: {
      maxMessages: offlineQueue.maxMessages ?? Infinity,
      maxBytes: offlineQueue.maxBytes ?? Infinity,
    },
    maxBufferedAmount: o.maxBufferedAmount ?? Infinity,
    WebSocket: options.WebSocket,
  };
}

/** setTimeout's longest delay: browsers fire longer ones at once (a 32-bit signed ms count). */
const MAX_DELAY = 2 ** 31 - 1;

/**
 * setTimeout with the delay clamped to [0, MAX_DELAY], so a huge option or a
 * token valid for months never turns into an immediate (and repeating) timer.
 * @param {() => void} callback
 * @param {number} ms
 * @returns {ReturnType<typeof setTimeout>}
 */
function later(callback, ms) {
  return setTimeout(callback, Math.min(Math.max(0, ms), MAX_DELAY));
}

/**
 * @param {ReturnType<typeof setTimeout> | ReturnType<typeof setInterval> | null} timer
 * @returns {null}
 */
function clear(timer) {
  if (timer !== null) clearTimeout(timer);
  return null;
}

// ---------------------------------------------------------------- client

/**
 * A reconnecting wire-protocol v1 client.
 *
 * Events (`on(event, cb)`): `state` (state, detail), `open` (OpenInfo),
 * `close` (CloseInfo), `message` (every envelope received), `error` (Error),
 * `recovery_failed` ({channel, epoch, offset}), and one event per received
 * application type (plus `joined`, `left`, `userJoined`, `userLeft`, `presence`).
 */
export class TidewireClient {
  /**
   * @param {string | URL | Array<string | URL>} urlOrUrls one URL, or several tried round-robin
   * @param {ClientOptions} [options]
   */
  constructor(urlOrUrls, options = {}) {
    const urls = Array.isArray(urlOrUrls) ? urlOrUrls : [urlOrUrls];
    if (urls.length === 0) throw new TypeError("TidewireClient needs at least one URL");
    /** @type {string[]} */
    this.urls = urls.map(resolveUrl);
    /** @type {ResolvedOptions} */
    this.options = resolveOptions(options);
    /** @type {ClientState} */
    this.state = "closed";
    /** @type {string | null} the current connection id */
    this.id = null;
    /** @type {string | null} the authenticated user */
    this.user = null;
    /** @type {string | null} the URL of the current (or last) connection */
    this.url = null;
    /** @type {CloseInfo | null} */
    this.lastClose = null;

    /** @type {Map<string, Set<(...args: any[]) => void>>} */
    this._listeners = new Map();
    /** @type {WebSocket | null} */
    this._ws = null;
    /** Bumped per socket: callbacks of an older socket are ignored. */
    this._gen = 0;
    /** @type {"idle" | "hello" | "auth" | "open"} where the current socket is in its handshake */
    this._phase = "idle";
    this._urlIndex = 0;
    this._attempts = 0;
    /** Bumped per attempt and by close(): an async token fetch of an older attempt is dropped. */
    this._attemptSeq = 0;
    this._stopped = true;
    this._everOpened = false;
    /** @type {OpenInfo | null} what connect() resolved with for the current connection */
    this._openInfo = null;
    this._nextId = 1;
    /** @type {Map<number, Pending>} */
    this._pending = new Map();
    /** @type {QueueEntry[]} */
    this._queue = [];
    this._queueBytes = 0;
    /** @type {Map<string, RoomEntry>} */
    this._rooms = new Map();
    /** @type {Map<string, ChannelEntry>} */
    this._channels = new Map();
    /** @type {Map<string, RpcHandler>} */
    this._rpcHandlers = new Map();
    /** @type {string | null} */
    this._token = null;
    this._tokenStale = true;
    /** @type {number | null} id of the auth message in flight */
    this._authId = null;
    /** @type {Envelope | null} the error that refused our auth on this socket */
    this._authError = null;
    this._reauthRetried = false;
    /** @type {Promise<OpenInfo> | null} */
    this._connectPromise = null;
    /** @type {((info: OpenInfo) => void) | null} */
    this._connectResolve = null;
    /** @type {((error: Error) => void) | null} */
    this._connectReject = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._reconnectTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._openTimer = null;
    /** @type {ReturnType<typeof setInterval> | null} */
    this._pingTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._pongTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._stableTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._drainTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._refreshTimer = null;
    this._onOnline = () => {
      if (this._reconnectTimer !== null) {
        this._reconnectTimer = clear(this._reconnectTimer);
        this._attempt();
      }
    };
  }

  // ------------------------------------------------------------ events

  /**
   * Listen to `event`; returns a function that removes the listener.
   * @param {string} event
   * @param {(...args: any[]) => void} callback
   * @returns {() => void}
   */
  on(event, callback) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(callback);
    return () => this.off(event, callback);
  }

  /**
   * Stop listening.
   * @param {string} event
   * @param {(...args: any[]) => void} callback
   */
  off(event, callback) {
    this._listeners.get(event)?.delete(callback);
  }

  /**
   * The first argument of the next `event`.
   * @param {string} event
   * @returns {Promise<any>}
   */
  once(event) {
    return new Promise((resolve) => {
      const off = this.on(event, (value) => {
        off();
        resolve(value);
      });
    });
  }

  /**
   * @param {string} event
   * @param {...any} args
   */
  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const callback of [...set]) {
      try {
        callback(...args);
      } catch (error) {
        if (event === "error") console.error("[tidewire] error listener failed", error);
        else this._emitError(/** @type {Error} */ (error));
      }
    }
  }

  /** @param {Error} error */
  _emitError(error) {
    if (this._listeners.get("error")?.size) this._emit("error", error);
    else console.warn("[tidewire]", error);
  }

  /**
   * @param {ClientState} state
   * @param {Record<string, any>} [detail]
   */
  _setState(state, detail = {}) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this._emit("state", state, {previous, ...detail});
  }

  // -------------------------------------------------------- connecting

  /**
   * Connect (or, while waiting to reconnect, try now). Resolves at the
   * `connection` hello, after `auth` succeeded when a token is configured;
   * rejects only when the client stops (a `stop` close code, close(), or
   * `reconnect.maxAttempts` exhausted), not on failed attempts.
   * @returns {Promise<OpenInfo>}
   */
  connect() {
    if (this._phase === "open" && this._openInfo !== null) return Promise.resolve(this._openInfo);
    if (!this._connectPromise) {
      this._connectPromise = new Promise((resolve, reject) => {
        this._connectResolve = resolve;
        this._connectReject = reject;
      });
      // The caller holds the same promise; this only keeps an unawaited one quiet.
      this._connectPromise.catch(() => {});
    }
    const promise = this._connectPromise;
    if (this._stopped) {
      this._stopped = false;
      this._attempts = 0;
      globalThis.addEventListener?.("online", this._onOnline);
      this._setState(this._everOpened ? "reconnecting" : "connecting");
      this._attempt();
    } else if (this._reconnectTimer !== null) {
      this._reconnectTimer = clear(this._reconnectTimer);
      this._attempt();
    }
    return promise;
  }

  /** One connection attempt: fetch a token if needed, then open a socket. */
  async _attempt() {
    const seq = ++this._attemptSeq;
    if (this.options.token !== null) {
      try {
        await this._ensureToken();
      } catch (error) {
        if (seq !== this._attemptSeq || this._stopped) return;
        this._emitError(
          new TidewireError(`the token function failed: ${error}`, "token_failed", {cause: error}),
        );
        this._scheduleReconnect("backoff");
        return;
      }
      if (seq !== this._attemptSeq || this._stopped) return;
    }
    this._open();
  }

  /** Fetch a token when there is none yet or the server asked for a fresh one. */
  async _ensureToken() {
    const source = this.options.token;
    if (typeof source === "string") {
      this._token = source;
    } else if (source !== null && (this._token === null || this._tokenStale)) {
      const token = await source();
      if (typeof token !== "string" || !token) {
        throw new TypeError("the token function must return a non-empty string");
      }
      this._token = token;
      this._tokenStale = false;
    }
  }

  _open() {
    const url = this.urls[this._urlIndex % this.urls.length];
    this._urlIndex += 1;
    const gen = ++this._gen;
    const WS = this.options.WebSocket || globalThis.WebSocket;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new WS(url, this.options.protocols);
    } catch (error) {
      this._stop(new TidewireError(`cannot open ${url}: ${error}`, "closed", {cause: error}));
      return;
    }
    this._ws = ws;
    this.url = url;
    this._phase = "hello";
    this._authError = null;
    ws.onmessage = (event) => {
      if (gen === this._gen) this._onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (gen === this._gen) this._closed(event.code, event.reason, event.wasClean);
    };
    ws.onerror = () => {}; // a close event always follows, with the code
    if (this.options.openTimeout !== null) {
      const ms = this.options.openTimeout;
      this._openTimer = later(() => this._abort(gen, `not open within ${ms} ms`), ms);
    }
  }

  /**
   * Give up on socket `gen` without waiting for its closing handshake (a dead
   * peer never answers it) and carry on as after an abnormal closure (1006).
   * @param {number} gen
   * @param {string} reason
   */
  _abort(gen, reason) {
    const ws = this._ws;
    if (gen !== this._gen || ws === null) return;
    detach(ws);
    try {
      ws.close(1000, reason.slice(0, 100));
    } catch {
      // already closing
    }
    this._closed(1006, reason, false);
  }

  /**
   * The current socket is gone: fail what was in flight, then act on the close code.
   * @param {number} code
   * @param {string} reason
   * @param {boolean} wasClean
   */
  _closed(code, reason, wasClean) {
    const ws = this._ws;
    if (ws) detach(ws);
    this._ws = null;
    this._gen += 1;
    this._phase = "idle";
    this._openInfo = null;
    this._clearConnectionTimers();
    this.id = null;
    const authError = this._authError;
    this._authError = null;
    this._authId = null;
    this._dropInFlight();

    let action = actionFor(code);
    // docs/protocol.md section 11: after a refused token (1008) a client that can
    // get a fresh one may try once more.
    if (
      action === "stop" &&
      code === 1008 &&
      authError !== null &&
      typeof this.options.token === "function" &&
      !this._reauthRetried
    ) {
      this._reauthRetried = true;
      action = "reauth";
    }
    /** @type {CloseInfo} */
    const info = {code, reason, action, wasClean};
    this.lastClose = info;
    this._emit("close", info);
    if (this._stopped) return; // a close listener called close()
    if (action === "stop") {
      const text = `the server closed the connection with ${code}${reason ? ` (${reason})` : ""}`;
      this._stop(new TidewireError(text, "closed", {closeCode: code, reason}));
      return;
    }
    if (action === "reauth") this._tokenStale = true;
    this._scheduleReconnect(action);
  }

  /** Requests written to the dead socket fail with `disconnected`; state requests are redone. */
  _dropInFlight() {
    for (const [id, pending] of this._pending) {
      if (pending.kind === "join" || pending.kind === "subscribe") {
        // rejoin/resubscribe on the next connection answers their waiters
        this._pending.delete(id);
        clear(pending.timer);
      } else if (pending.kind === "leave" || pending.kind === "unsubscribe") {
        // done either way: the server forgets memberships with the connection
        this._pending.delete(id);
        clear(pending.timer);
        pending.resolve(null);
      } else if (pending.sent) {
        this._pending.delete(id);
        clear(pending.timer);
        pending.reject(
          new TidewireError(
            `the connection dropped before the ${pending.kind} was answered`,
            "disconnected",
          ),
        );
      }
    }
    for (const room of this._rooms.values()) room.reqId = null;
    for (const channel of this._channels.values()) {
      channel.reqId = null;
      channel.buffer = [];
    }
    const kept = this._queue.filter((entry) => entry.kind !== "state");
    if (kept.length !== this._queue.length) {
      this._queue = kept;
      this._queueBytes = kept.reduce((sum, entry) => sum + entry.bytes, 0);
    }
  }

  /** @param {CloseAction} action */
  _scheduleReconnect(action) {
    const {base, cap, maxAttempts} = this.options.reconnect;
    if (this._attempts >= maxAttempts) {
      const error = new TidewireError(
        `gave up after ${this._attempts} reconnection attempts (reconnect.maxAttempts=${maxAttempts})`,
        "gave_up",
      );
      this._emitError(error);
      this._stop(error);
      return;
    }
    const attempt = this._attempts++;
    // "Reconnect now" (4000-4099, 1001, 1012, 4200s once the token is fresh) waits only a
    // jitter of up to `base`; if that keeps failing, the exponential schedule takes over.
    const now = (action === "reconnect" || action === "reauth") && attempt === 0;
    const delay = now ? Math.floor(Math.random() * base) : backoffDelay(attempt, base, cap);
    this._setState("reconnecting", {attempt: attempt + 1, delay, action});
    this._reconnectTimer = later(() => {
      this._reconnectTimer = null;
      this._attempt();
    }, delay);
  }

  /**
   * Stop for good (until connect() is called again): fail everything waiting.
   * Rooms, channel positions and plain queued messages are kept for a later connect().
   * @param {TidewireError} error
   */
  _stop(error) {
    this._stopped = true;
    this._attemptSeq += 1;
    this._reconnectTimer = clear(this._reconnectTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    for (const [id, pending] of this._pending) {
      this._pending.delete(id);
      clear(pending.timer);
      pending.reject(error);
    }
    const kept = this._queue.filter((entry) => entry.kind === "app");
    this._queue = kept;
    this._queueBytes = kept.reduce((sum, entry) => sum + entry.bytes, 0);
    for (const room of this._rooms.values()) rejectAll(room.waiters, error);
    for (const channel of this._channels.values()) rejectAll(channel.waiters, error);
    const reject = this._connectReject;
    this._connectPromise = this._connectResolve = this._connectReject = null;
    if (reject) reject(error);
    this._setState("closed", {error});
  }

  /**
   * Close with `code` (1000 or 3000-4999) and stop reconnecting. Pending
   * requests fail with code `closed`; rooms, subscriptions and the offline
   * queue are dropped. connect() starts afresh.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new RangeError(`a browser may close only with 1000 or 3000-4999, not ${code}`);
    }
    if (new TextEncoder().encode(reason).length > 123) {
      throw new RangeError("a close reason may be at most 123 bytes of UTF-8");
    }
    const ws = this._ws;
    this._ws = null;
    this._gen += 1;
    this._phase = "idle";
    this._openInfo = null;
    this._clearConnectionTimers();
    this.id = null;
    if (ws) {
      detach(ws);
      ws.close(code, reason);
    }
    const wasRunning = !this._stopped;
    this._queue = [];
    this._queueBytes = 0;
    const error = new TidewireError("the client was closed", "closed", {closeCode: code, reason});
    this._stop(error);
    this._rooms.clear();
    this._channels.clear();
    this._everOpened = false;
    if (wasRunning) {
      /** @type {CloseInfo} */
      const info = {code, reason, action: "stop", wasClean: true};
      this.lastClose = info;
      this._emit("close", info);
    }
  }

  _clearConnectionTimers() {
    this._openTimer = clear(this._openTimer);
    this._pingTimer = clear(this._pingTimer); // clearTimeout clears intervals too (HTML spec)
    this._pongTimer = clear(this._pongTimer);
    this._stableTimer = clear(this._stableTimer);
    this._drainTimer = clear(this._drainTimer);
    this._refreshTimer = clear(this._refreshTimer);
  }

  // -------------------------------------------------------- receiving

  /** @param {any} data */
  _onFrame(data) {
    if (typeof data !== "string") {
      this._emitError(new TidewireError("the server sent a binary message", "bad_message"));
      return;
    }
    /** @type {any} */
    let envelope;
    try {
      envelope = JSON.parse(data);
    } catch {
      this._emitError(
        new TidewireError("the server sent a message that is not JSON", "bad_message"),
      );
      return;
    }
    this._onEnvelope(envelope);
  }

  /**
   * Handle one decoded envelope; a `batch` (the server's opt-in batching) is
   * handled element by element, as if each had arrived on its own.
   * @param {any} envelope
   */
  _onEnvelope(envelope) {
    if (!envelope || typeof envelope !== "object" || typeof envelope.type !== "string") {
      this._emitError(new TidewireError("the server sent a message without a type", "bad_message"));
      return;
    }
    if (envelope.type === "batch" && Array.isArray(envelope.messages)) {
      for (const item of envelope.messages) this._onEnvelope(item);
      return;
    }
    this._emit("message", envelope);
    switch (envelope.type) {
      case "connection":
        this._onHello(envelope);
        break;
      case "auth":
        this._onAuth(envelope);
        break;
      case "pong":
        this._pongTimer = clear(this._pongTimer);
        break;
      case "joined":
        this._onJoined(envelope);
        break;
      case "left":
      case "unsubscribed":
        this._settle(envelope.id, envelope);
        break;
      case "subscribed":
        this._onSubscribed(envelope);
        break;
      case "publish":
        this._onPublish(envelope);
        break;
      case "published":
        this._settle(envelope.id, envelope.offset);
        break;
      case "rpc_result":
        this._onRpcResult(envelope);
        break;
      case "rpc":
        this._answerRpc(this._gen, envelope);
        break;
      case "error":
        this._onError(envelope);
        break;
    }
    if (!INTERNAL_TYPES.has(envelope.type) && !CLIENT_EVENTS.has(envelope.type)) {
      this._emit(envelope.type, envelope);
    }
  }

  /** @param {Envelope} envelope */
  _onHello(envelope) {
    if (this._phase !== "hello") return;
    this.id = String(envelope.id);
    this.user = typeof envelope.user === "string" ? envelope.user : null;
    if (this._token !== null) {
      this._phase = "auth";
      this._sendAuth(this._token);
    } else {
      this._becomeOpen();
    }
  }

  /** @param {string} token */
  _sendAuth(token) {
    const id = this._nextId++;
    this._authId = id;
    this._writeNow({type: "auth", token, id});
  }

  /** @param {Envelope} envelope */
  _onAuth(envelope) {
    if (envelope.status !== "success") return;
    this._authId = null;
    this._reauthRetried = false;
    this.user = typeof envelope.user === "string" ? envelope.user : this.user;
    this._scheduleRefresh(envelope.expires_at);
    if (this._phase === "auth") this._becomeOpen();
  }

  /**
   * Refresh a token function's token in place before it expires (docs/protocol.md 3.4).
   * @param {unknown} expiresAt Unix time in seconds
   */
  _scheduleRefresh(expiresAt) {
    this._refreshTimer = clear(this._refreshTimer);
    const fraction = this.options.tokenRefresh;
    if (
      typeof this.options.token !== "function" ||
      fraction === null ||
      typeof expiresAt !== "number"
    ) {
      return;
    }
    const remaining = expiresAt * 1000 - Date.now();
    if (remaining <= 0) return;
    const gen = this._gen;
    this._refreshTimer = later(
      async () => {
        this._refreshTimer = null;
        this._tokenStale = true;
        try {
          await this._ensureToken();
        } catch (error) {
          // the server closes with 4200 at expiry; the reconnect then tries again
          this._emitError(
            new TidewireError(`token refresh failed: ${error}`, "token_failed", {cause: error}),
          );
          return;
        }
        if (gen === this._gen && this._phase === "open" && this._token !== null) {
          this._sendAuth(this._token);
        }
      },
      Math.max(0, remaining * fraction),
    );
  }

  /** The connection is usable: restore rooms and channels, flush the queue, then tell the app. */
  _becomeOpen() {
    this._openTimer = clear(this._openTimer);
    this._phase = "open";
    const gen = this._gen;
    const {stableAfter} = this.options.reconnect;
    if (Number.isFinite(stableAfter)) {
      this._stableTimer = later(() => {
        this._stableTimer = null;
        this._attempts = 0;
      }, stableAfter);
    }
    if (this.options.pingInterval !== null) {
      const every = Math.min(Math.max(10, this.options.pingInterval), MAX_DELAY);
      this._pingTimer = setInterval(() => this._ping(gen), every);
    }
    // Restored state goes first, so queued messages meant for a room find it joined
    // (the server runs joins and application messages in arrival order).
    for (const [room, entry] of this._rooms) this._sendJoin(room, entry, true);
    for (const [channel, entry] of this._channels) this._sendSubscribe(channel, entry, true);
    this._flush();
    /** @type {OpenInfo} */
    const info = {
      id: String(this.id),
      user: this.user,
      url: String(this.url),
      reconnected: this._everOpened,
    };
    this._openInfo = info;
    this._everOpened = true;
    const resolve = this._connectResolve;
    this._connectPromise = this._connectResolve = this._connectReject = null;
    this._setState("open");
    if (resolve) resolve(info);
    this._emit("open", info);
  }

  /** @param {number} gen */
  _ping(gen) {
    if (gen !== this._gen || this._phase !== "open" || this._pongTimer !== null) return;
    this._writeNow({type: "ping", id: this._nextId++});
    const ms = this.options.pongTimeout;
    this._pongTimer = later(() => {
      this._pongTimer = null;
      this._abort(gen, `no pong within ${ms} ms`);
    }, ms);
  }

  /** @param {Envelope} envelope */
  _onError(envelope) {
    const ref = envelope.ref;
    const error = new TidewireError(
      String(envelope.message ?? envelope.code),
      String(envelope.code),
      {
        envelope,
        ref,
        retryAfter: envelope.retry_after,
      },
    );
    if (ref !== undefined && ref === this._authId) {
      // The server closes with 1008 right after; don't wait for it.
      this._authError = envelope;
      this._emitError(error);
      const ws = this._ws;
      if (ws) {
        detach(ws);
        try {
          ws.close(1000, "auth refused");
        } catch {
          // already closing
        }
      }
      this._closed(1008, String(envelope.message ?? "unauthorized"), false);
      return;
    }
    const pending = typeof ref === "number" ? this._pending.get(ref) : undefined;
    if (pending === undefined || typeof ref !== "number") {
      this._emitError(error);
      return;
    }
    this._pending.delete(ref);
    clear(pending.timer);
    if (
      error.code === "rate_limited" &&
      (pending.kind === "join" || pending.kind === "subscribe") &&
      this._retryLater(pending.kind, /** @type {string} */ (pending.target), ref, error)
    ) {
      return;
    }
    if (pending.kind === "join") {
      const room = /** @type {string} */ (pending.target);
      const entry = this._rooms.get(room);
      if (entry && entry.reqId === ref) {
        this._rooms.delete(room);
        error.details.room = room;
        if (entry.waiters.length) rejectAll(entry.waiters, error);
        else this._emitError(error); // a rejoin after a reconnect was refused
      }
    } else if (pending.kind === "subscribe") {
      const channel = /** @type {string} */ (pending.target);
      const entry = this._channels.get(channel);
      if (entry && entry.reqId === ref) {
        this._channels.delete(channel);
        error.details.channel = channel;
        if (entry.waiters.length) rejectAll(entry.waiters, error);
        else this._emitError(error);
      }
    } else if (
      (pending.kind === "leave" && error.code === "not_member") ||
      pending.kind === "unsubscribe"
    ) {
      pending.resolve(null);
    } else {
      pending.reject(error);
    }
  }

  /**
   * A join or subscribe refused by the rate limit (a reconnect restoring many rooms
   * and channels at once can exceed the server's burst): send it again after
   * `retry_after`. False when that request is no longer the current one.
   * @param {"join" | "subscribe"} kind
   * @param {string} name
   * @param {number} ref
   * @param {TidewireError} error
   * @returns {boolean}
   */
  _retryLater(kind, name, ref, error) {
    const entry = kind === "join" ? this._rooms.get(name) : this._channels.get(name);
    if (!entry || entry.reqId !== ref) return false;
    entry.reqId = -1; // neither idle nor answerable: a join()/subscribe() meanwhile just waits
    const gen = this._gen;
    const seconds = Number(error.details.retryAfter);
    later(
      () => {
        const current = kind === "join" ? this._rooms.get(name) : this._channels.get(name);
        if (gen !== this._gen || current !== entry || entry.reqId !== -1) return;
        if (kind === "join") this._sendJoin(name, /** @type {RoomEntry} */ (entry), false);
        else this._sendSubscribe(name, /** @type {ChannelEntry} */ (entry), false);
      },
      // jittered, so the refused requests do not all come back in the same instant
      (Number.isFinite(seconds) && seconds > 0 ? seconds : 1) * 1000 * (1 + Math.random()),
    );
    return true;
  }

  /**
   * Resolve the plain request `id` with `value`.
   * @param {unknown} id
   * @param {any} value
   */
  _settle(id, value) {
    if (typeof id !== "number") return;
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clear(pending.timer);
    pending.resolve(value);
  }

  /** @param {Envelope} envelope */
  _onRpcResult(envelope) {
    const id = envelope.id;
    const pending = typeof id === "number" ? this._pending.get(id) : undefined;
    if (!pending || pending.kind !== "call") return;
    this._pending.delete(id);
    clear(pending.timer);
    const error = envelope.error;
    if (error) {
      pending.reject(
        new TidewireError(String(error.message ?? error.code), String(error.code), {envelope}),
      );
    } else {
      pending.resolve(envelope.result);
    }
  }

  // ------------------------------------------------------------ sending

  /**
   * Send an application message. While not open (or while the socket has more
   * than `maxBufferedAmount` bytes in flight) it waits in the offline queue and
   * is sent, in order, once connected. Returns true when written at once,
   * false when queued. Throws OfflineQueueFull when the queue is full: nothing
   * is ever dropped silently.
   * @param {Envelope} envelope
   * @returns {boolean}
   */
  send(envelope) {
    if (
      !envelope ||
      typeof envelope !== "object" ||
      typeof envelope.type !== "string" ||
      !envelope.type
    ) {
      throw new TypeError('send() needs an object with a non-empty string "type"');
    }
    if (MANAGED_TYPES.has(envelope.type)) {
      throw new TypeError(
        `send() does not take "${envelope.type}" messages: use the client's method, ` +
          "which restores rooms, subscriptions and credentials after a reconnect",
      );
    }
    return this._transmit(envelope, "app", null);
  }

  /** Messages waiting in the offline queue. */
  get queued() {
    return this._queue.length;
  }

  /** UTF-8 bytes waiting in the offline queue. */
  get queuedBytes() {
    return this._queueBytes;
  }

  /**
   * Write now if the socket is open and not backed up, else queue (in order).
   * @param {Envelope} envelope
   * @param {"app" | "request" | "state"} kind
   * @param {number | null} id the pending request this is, if any
   * @returns {boolean} written now
   */
  _transmit(envelope, kind, id) {
    const text = JSON.stringify(envelope);
    if (this._queue.length === 0 && this._writable()) {
      /** @type {WebSocket} */ (this._ws).send(text);
      if (id !== null) this._markSent(id);
      return true;
    }
    const bytes = utf8Length(text);
    if (kind !== "state") {
      const {maxMessages, maxBytes} = this.options.offlineQueue;
      if (this._queue.length + 1 > maxMessages) {
        throw new OfflineQueueFull("messages", maxMessages, this._queue.length, bytes);
      }
      if (this._queueBytes + bytes > maxBytes) {
        throw new OfflineQueueFull("bytes", maxBytes, this._queueBytes, bytes);
      }
    }
    this._queue.push({text, bytes, kind, id});
    this._queueBytes += bytes;
    if (this._phase === "open") this._scheduleDrain();
    return false;
  }

  /**
   * Whether a send now goes straight out. `bufferedAmount` is what the browser
   * has accepted but not yet handed to the network: above `maxBufferedAmount` the
   * socket is stalled (slow network, or a peer that stopped reading), and piling
   * more on it would only grow browser memory and lose more if the connection
   * then dies, so sends wait in the bounded queue until it drains.
   * @returns {boolean}
   */
  _writable() {
    const ws = this._ws;
    return (
      this._phase === "open" &&
      ws !== null &&
      ws.readyState === 1 && // OPEN: a CLOSING socket silently discards sends
      ws.bufferedAmount <= this.options.maxBufferedAmount
    );
  }

  /** Send queued messages in order while the socket takes them. */
  _flush() {
    while (this._queue.length && this._writable()) {
      const entry = /** @type {QueueEntry} */ (this._queue.shift());
      this._queueBytes -= entry.bytes;
      /** @type {WebSocket} */ (this._ws).send(entry.text);
      if (entry.id !== null) this._markSent(entry.id);
    }
    if (this._queue.length && this._phase === "open") this._scheduleDrain();
  }

  _scheduleDrain() {
    if (this._drainTimer !== null) return;
    // Browsers fire no event when bufferedAmount falls, so poll.
    this._drainTimer = setTimeout(() => {
      this._drainTimer = null;
      this._flush();
    }, DRAIN_POLL_MS);
  }

  /**
   * Write a control message on the current socket, bypassing the queue.
   * @param {Envelope} envelope
   */
  _writeNow(envelope) {
    const ws = this._ws;
    if (ws !== null && ws.readyState === 1) ws.send(JSON.stringify(envelope));
  }

  /** @param {number} id */
  _markSent(id) {
    const pending = this._pending.get(id);
    if (pending) pending.sent = true;
  }

  /**
   * Remove a request that timed out before it was sent.
   * @param {number} id
   */
  _unqueue(id) {
    const index = this._queue.findIndex((entry) => entry.id === id);
    if (index >= 0) {
      this._queueBytes -= this._queue[index].bytes;
      this._queue.splice(index, 1);
    }
  }

  /**
   * Send `envelope` with a fresh id and wait for the reply with that id.
   * @param {Envelope} envelope
   * @param {RequestKind} kind
   * @param {{timeout?: number | null, target?: string, direct?: boolean, since?: boolean}} [opts]
   * @returns {{id: number, promise: Promise<any>}}
   */
  _request(envelope, kind, opts = {}) {
    const id = this._nextId++;
    /** @type {Pending} */
    const entry = {
      kind,
      resolve: () => {},
      reject: () => {},
      timer: null,
      sent: false,
      target: opts.target,
      since: opts.since,
    };
    const promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    this._pending.set(id, entry);
    const timeout = opts.timeout;
    if (typeof timeout === "number" && timeout > 0 && Number.isFinite(timeout)) {
      entry.timer = later(() => {
        if (this._pending.get(id) !== entry) return;
        this._pending.delete(id);
        this._unqueue(id);
        const what = envelope.type === "rpc" ? `call to ${envelope.method}` : envelope.type;
        entry.reject(new TidewireError(`no answer to the ${what} within ${timeout} ms`, "timeout"));
      }, timeout);
    }
    const message = {...envelope, id};
    try {
      if (opts.direct) {
        this._writeNow(message);
        entry.sent = true;
      } else {
        this._transmit(message, kind === "call" || kind === "publish" ? "request" : "state", id);
      }
    } catch (error) {
      this._pending.delete(id);
      clear(entry.timer);
      entry.reject(/** @type {Error} */ (error));
    }
    return {id, promise};
  }

  // -------------------------------------------------------------- rooms

  /**
   * Join `room`; resolves with the `joined` reply ({room, count, members}),
   * rejects with the server's error code. The room is rejoined after every
   * reconnect (each rejoin's reply is also emitted as a `joined` event).
   * @param {string} room
   * @returns {Promise<Envelope>}
   */
  join(room) {
    const invalid = checkName(room, "room");
    if (invalid) return Promise.reject(invalid);
    let entry = this._rooms.get(room);
    if (!entry) {
      entry = {waiters: [], reqId: null};
      this._rooms.set(room, entry);
    }
    const target = entry;
    return new Promise((resolve, reject) => {
      target.waiters.push({resolve, reject});
      if (this._phase === "open" && target.reqId === null) this._sendJoin(room, target, false);
    });
  }

  /**
   * @param {string} room
   * @param {RoomEntry} entry
   * @param {boolean} direct on (re)connect: ahead of the offline queue
   */
  _sendJoin(room, entry, direct) {
    const {id, promise} = this._request({type: "join", room}, "join", {target: room, direct});
    promise.catch(() => {}); // the room's waiters get the outcome
    entry.reqId = id;
  }

  /** @param {Envelope} envelope */
  _onJoined(envelope) {
    const id = envelope.id;
    const pending = typeof id === "number" ? this._pending.get(id) : undefined;
    if (!pending || pending.kind !== "join") return;
    this._pending.delete(id);
    const entry = this._rooms.get(/** @type {string} */ (pending.target));
    if (!entry || entry.reqId !== id) return;
    entry.reqId = null;
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.resolve(envelope);
  }

  /**
   * Leave `room` and stop rejoining it. Resolves with the `left` reply, or
   * null when there was nothing to leave (not connected, or not a member).
   * @param {string} room
   * @returns {Promise<Envelope | null>}
   */
  leave(room) {
    const invalid = checkName(room, "room");
    if (invalid) return Promise.reject(invalid);
    const entry = this._rooms.get(room);
    this._rooms.delete(room);
    if (entry) {
      rejectAll(
        entry.waiters,
        new TidewireError(`left room ${room} before the join completed`, "cancelled"),
      );
    }
    if (this._phase !== "open") return Promise.resolve(null);
    return this._request({type: "leave", room}, "leave", {target: room}).promise;
  }

  /** Rooms the client is in or joining (rejoined after a reconnect). */
  get rooms() {
    return [...this._rooms.keys()];
  }

  // ----------------------------------------------------------- channels

  /**
   * Subscribe `callback(payload, {channel, offset, epoch})` to `channel`.
   * Resolves at `subscribed` with a function that unsubscribes. The client
   * remembers the last (epoch, offset) and resubscribes after a reconnect with
   * `since`: missed publications reach the callback in order before live ones,
   * duplicates are dropped, and a gap that cannot be filled emits
   * `recovery_failed` ({channel, epoch, offset}) so the app refetches.
   * @param {string} channel
   * @param {PublicationCallback} callback
   * @returns {Promise<() => void>}
   */
  subscribe(channel, callback) {
    const invalid = checkName(channel, "channel");
    if (invalid) return Promise.reject(invalid);
    if (typeof callback !== "function") {
      return Promise.reject(new TypeError("subscribe() needs a callback"));
    }
    let entry = this._channels.get(channel);
    if (!entry) {
      entry = {
        subs: new Set(),
        waiters: [],
        epoch: null,
        offset: 0,
        subscribed: false,
        reqId: null,
        buffer: [],
      };
      this._channels.set(channel, entry);
    }
    const target = entry;
    /** @type {Subscription} */
    const sub = {fn: callback};
    target.subs.add(sub);
    const unsubscribe = () => this._unsubscribe(channel, sub);
    if (target.subscribed && target.reqId === null) return Promise.resolve(unsubscribe);
    return new Promise((resolve, reject) => {
      target.waiters.push({
        resolve: () => resolve(unsubscribe),
        reject: (error) => {
          target.subs.delete(sub);
          reject(error);
        },
      });
      if (this._phase === "open" && target.reqId === null) {
        this._sendSubscribe(channel, target, false);
      }
    });
  }

  /**
   * @param {string} channel
   * @param {ChannelEntry} entry
   * @param {boolean} direct
   */
  _sendSubscribe(channel, entry, direct) {
    /** @type {Envelope} */
    const envelope = {type: "subscribe", channel};
    const since = entry.epoch !== null;
    if (since) envelope.since = {epoch: entry.epoch, offset: entry.offset};
    const {id, promise} = this._request(envelope, "subscribe", {target: channel, direct, since});
    promise.catch(() => {}); // the channel's waiters get the outcome
    entry.reqId = id;
  }

  /** @param {Envelope} envelope */
  _onSubscribed(envelope) {
    const id = envelope.id;
    const pending = typeof id === "number" ? this._pending.get(id) : undefined;
    if (!pending || pending.kind !== "subscribe") return;
    this._pending.delete(id);
    const channel = /** @type {string} */ (pending.target);
    const entry = this._channels.get(channel);
    if (!entry || entry.reqId !== id) return;
    entry.reqId = null;
    let failed = false;
    if (pending.since && envelope.recovered === true && envelope.epoch === entry.epoch) {
      for (const pub of envelope.publications || []) this._deliver(channel, entry, pub);
      entry.offset = Math.max(entry.offset, Number(envelope.offset) || 0);
    } else {
      failed = pending.since === true;
      entry.epoch = typeof envelope.epoch === "string" ? envelope.epoch : null;
      entry.offset = Number(envelope.offset) || 0;
    }
    if (failed) this._emit("recovery_failed", {channel, epoch: entry.epoch, offset: entry.offset});
    const buffered = entry.buffer;
    entry.buffer = [];
    for (const pub of buffered) this._deliver(channel, entry, pub);
    entry.subscribed = true;
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.resolve(undefined);
  }

  /** @param {Envelope} envelope */
  _onPublish(envelope) {
    const channel = envelope.channel;
    const entry = typeof channel === "string" ? this._channels.get(channel) : undefined;
    if (!entry || typeof channel !== "string") return;
    if (entry.reqId !== null) {
      entry.buffer.push(envelope); // delivered after the subscribed reply, in order
      return;
    }
    const offset = envelope.offset;
    if (
      typeof offset === "number" &&
      entry.epoch !== null &&
      offset > entry.offset + 1 &&
      this._phase === "open"
    ) {
      // A skipped offset: ask for what is missing (docs/protocol.md section 7).
      entry.buffer.push(envelope);
      this._sendSubscribe(channel, entry, false);
      return;
    }
    this._deliver(channel, entry, envelope);
  }

  /**
   * Hand a publication to the channel's callbacks, once per offset.
   * @param {string} channel
   * @param {ChannelEntry} entry
   * @param {Envelope} pub
   */
  _deliver(channel, entry, pub) {
    const offset = pub.offset;
    if (typeof offset === "number") {
      if (offset <= entry.offset) return; // seen already (recovery overlap)
      entry.offset = offset;
    }
    /** @type {PublicationInfo} */
    const info = {channel, offset, epoch: entry.epoch};
    for (const sub of [...entry.subs]) {
      try {
        sub.fn(pub.payload, info);
      } catch (error) {
        this._emitError(/** @type {Error} */ (error));
      }
    }
  }

  /**
   * @param {string} channel
   * @param {Subscription} sub
   */
  _unsubscribe(channel, sub) {
    const entry = this._channels.get(channel);
    if (!entry || !entry.subs.delete(sub) || entry.subs.size > 0) return;
    this._channels.delete(channel);
    if (this._phase === "open") {
      this._request({type: "unsubscribe", channel}, "unsubscribe", {target: channel}).promise.catch(
        () => {},
      );
    }
  }

  /** Channels subscribed (resubscribed after a reconnect). */
  get channels() {
    return [...this._channels.keys()];
  }

  /**
   * The last position seen on `channel`, or null.
   * @param {string} channel
   * @returns {{epoch: string | null, offset: number} | null}
   */
  position(channel) {
    const entry = this._channels.get(channel);
    return entry ? {epoch: entry.epoch, offset: entry.offset} : null;
  }

  /**
   * Publish `payload` to `channel`; resolves with the publication's offset.
   * Queued like send() while disconnected; rejects with `disconnected` when
   * the connection drops before the server confirmed it (it may or may not
   * have been published), `timeout`, or the server's code (e.g. `forbidden`).
   * @param {string} channel
   * @param {any} payload
   * @param {{timeout?: number}} [options]
   * @returns {Promise<number>}
   */
  publish(channel, payload, options = {}) {
    const invalid = checkName(channel, "channel");
    if (invalid) return Promise.reject(invalid);
    const timeout = options.timeout ?? this.options.callTimeout;
    return this._request({type: "publish", channel, payload: payload ?? null}, "publish", {timeout})
      .promise;
  }

  // ---------------------------------------------------------------- RPC

  /**
   * Call a server method; resolves with its result. Rejects with a
   * TidewireError whose `code` is `timeout` (no answer within `timeout` ms,
   * default `callTimeout`), `disconnected` (the connection dropped while the
   * call was out), `closed`, or the server's code (`no_such_method`, ...).
   * Calls made while disconnected wait in the offline queue.
   * @param {string} method
   * @param {any} [params]
   * @param {{timeout?: number}} [options]
   * @returns {Promise<any>}
   */
  call(method, params, options = {}) {
    if (typeof method !== "string" || !method) {
      return Promise.reject(new TypeError("call() needs a method name"));
    }
    /** @type {Envelope} */
    const envelope = {type: "rpc", method};
    if (params !== undefined) envelope.params = params;
    const timeout = options.timeout ?? this.options.callTimeout;
    return this._request(envelope, "call", {timeout}).promise;
  }

  /**
   * Answer the server's `rpc` calls of `method` with `handler(params, envelope)`
   * (may be async). Its return value is the result (undefined becomes null);
   * a thrown error becomes `{code: error.code or "handler_error", message}`.
   * Pass null to remove the handler; unknown methods get `no_such_method`.
   * @param {string} method
   * @param {RpcHandler | null} handler
   */
  rpc(method, handler) {
    if (handler === null) this._rpcHandlers.delete(method);
    else if (typeof handler === "function") this._rpcHandlers.set(method, handler);
    else throw new TypeError("rpc() needs a handler function (or null)");
  }

  /**
   * @param {number} gen the socket the call came on
   * @param {Envelope} envelope
   */
  async _answerRpc(gen, envelope) {
    const handler = this._rpcHandlers.get(envelope.method);
    /** @type {Envelope} */
    let reply;
    if (!handler) {
      reply = {
        type: "rpc_result",
        id: envelope.id,
        error: {code: "no_such_method", message: `no method ${envelope.method}`},
      };
    } else {
      try {
        const result = await handler(envelope.params, envelope);
        reply = {type: "rpc_result", id: envelope.id, result: result === undefined ? null : result};
        JSON.stringify(reply); // a result that is not JSON is the handler's error
      } catch (error) {
        const err = /** @type {any} */ (error);
        const code = err && typeof err.code === "string" && err.code ? err.code : "handler_error";
        const message = err && typeof err.message === "string" ? err.message : String(err);
        reply = {type: "rpc_result", id: envelope.id, error: {code, message}};
      }
    }
    // On another connection the server has already failed the call (disconnected).
    if (gen === this._gen) this._writeNow(reply);
  }
}

// -------------------------------------------------------------- internals

/**
 * @param {unknown} name
 * @param {string} what
 * @returns {TidewireError | null}
 */
function checkName(name, what) {
  if (typeof name === "string" && NAME.test(name)) return null;
  return new TidewireError(
    `${what} must be 1-255 characters from A-Z a-z 0-9 _ . : @ / # = + -, got ${JSON.stringify(name)}`,
    "invalid",
  );
}

/**
 * @param {Waiter[]} waiters
 * @param {Error} error
 */
function rejectAll(waiters, error) {
  const all = waiters.splice(0);
  for (const waiter of all) waiter.reject(error);
}

/** @param {WebSocket} ws */
function detach(ws) {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
}
