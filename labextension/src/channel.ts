/**
 * The session channel client: one WebSocket to `cloudide/api/ws` per browser tab that
 * survives network drops and page reloads.
 *
 * - Requests are correlated by `id`; sends made while disconnected are queued and go out
 *   once the session is back.
 * - Every server frame but `welcome`/`pong` carries an increasing `seq`. The last one seen is
 *   kept (in `sessionStorage`, with the session id), so a reconnect - or a reload of the
 *   page - asks the server to replay what was missed, and frames seen before are ignored.
 * - Reconnects back off exponentially with jitter; a ping every `heartbeat_s` detects a
 *   connection that died silently.
 * - When the server no longer has the session (expired, or taken over by a duplicated tab),
 *   `sessionReset` fires: state must be refetched over REST.
 *
 * Nothing here imports JupyterLab: the WebSocket constructor, storage and clock are injected,
 * so the logic is unit-tested as is.
 */

import { ISignal, Signal } from '@lumino/signaling';

import { CloudIDEError } from './errors';
import type { IErrorBody } from './tokens';

/** A frame of the session channel protocol. */
export interface IFrame {
  type: 'welcome' | 'request' | 'response' | 'event' | 'stream' | 'ping' | 'pong' | string;
  id?: number;
  seq?: number;
  payload?: any;
  error?: IErrorBody;
  /**
   * Set by the client (never on the wire): the frame had been delivered before, to this page
   * or to the page before a reload, and is delivered again because of `replayFrom()`.
   */
  replayed?: boolean;
}

/** A resumed session whose replay started later than asked: frames were lost. */
export interface IReplayGap {
  /** The first seq that was asked for. */
  expected: number;
  /** The first seq that came. */
  received: number;
}

/** The payload of the server's `welcome` frame. */
export interface IWelcome {
  session_id: string;
  resumed: boolean;
  last_seq: number;
  max_frame_bytes?: number;
  heartbeat_s?: number;
}

export type ChannelState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The subset of the browser WebSocket the channel uses. */
export interface IWebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface IChannelOptions {
  /** The ws(s):// URL of `cloudide/api/ws` (query parameters are added here). */
  url: string;
  /** Creates the socket; defaults to the browser's WebSocket. */
  createSocket?: (url: string) => IWebSocketLike;
  /** Where session id and last seq survive a reload; null: nowhere. */
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  storageKey?: string;
  /** Reconnect delays: initial, factor, cap (ms), and +/- jitter share. */
  backoff?: { initialMs: number; factor: number; maxMs: number; jitter: number };
  /** Requests waiting for a connection, at most (older ones are rejected). */
  maxQueued?: number;
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (handle: any) => void;
}

/** Options of one request. */
export interface IRequestOptions {
  /** Reject when aborted (the server-side work is not cancelled by this). */
  signal?: AbortSignal;
  /**
   * Called at once with the request's frame id: `event`/`stream` frames the server pushes
   * for this request carry it as their `id`.
   */
  onId?: (id: number) => void;
}

interface IPending {
  id: number;
  frame: string;
  resolve: (payload: any) => void;
  reject: (error: Error) => void;
  sent: boolean;
}

const OPEN = 1;
/** Close codes after which reconnecting cannot help. */
const FATAL_CLOSE_CODES = new Set([1003, 1008]);
/** The server closed this connection because a newer one took the session. */
const TAKEN_OVER = 4009;

/**
 * The session channel. Create one per tab; call `connect()`; `dispose()` closes it.
 */
export class SessionChannel {
  constructor(options: IChannelOptions) {
    this._options = options;
    this._backoff = options.backoff ?? {
      initialMs: 500,
      factor: 2,
      maxMs: 30_000,
      jitter: 0.25
    };
    this._createSocket =
      options.createSocket ??
      ((url: string) => new WebSocket(url) as unknown as IWebSocketLike);
    this._storage = options.storage === undefined ? safeSessionStorage() : options.storage;
    this._key = options.storageKey ?? 'jupyter-cloudide:session';
    this._setTimeout = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? (h => clearTimeout(h));
    this._random = options.random ?? Math.random;
    // Request ids start at a random point: a reloaded page resumes the old page's session,
    // and an id the old page used must not match this page's requests.
    this._nextId = Math.floor(this._random() * 1e9);
    const saved = this._load();
    this._sessionId = saved?.sessionId ?? null;
    this._lastSeq = saved?.lastSeq ?? 0;
  }

  /**
   * Every `event` and `stream` frame, once each, in `seq` order (frames that `replayFrom()`
   * asks for again come again, marked `replayed`).
   */
  get frameReceived(): ISignal<this, IFrame> {
    return this._frameReceived;
  }

  /** Connection state changes. */
  get stateChanged(): ISignal<this, ChannelState> {
    return this._stateChanged;
  }

  /** The server no longer had our session: frames may have been lost, refetch state. */
  get sessionReset(): ISignal<this, void> {
    return this._sessionReset;
  }

  /**
   * `response` frames no request of this page waits for: answers to requests a page sent
   * before it was reloaded (replayed on resume), e.g. the end of a chat turn.
   */
  get unmatchedResponse(): ISignal<this, IFrame> {
    return this._unmatchedResponse;
  }

  /**
   * A resume replayed from a later seq than asked (the server's bounded buffer had dropped
   * the rest): what was lost must be refetched over REST.
   */
  get replayGap(): ISignal<this, IReplayGap> {
    return this._replayGap;
  }

  get state(): ChannelState {
    return this._state;
  }

  get sessionId(): string | null {
    return this._sessionId;
  }

  /** The highest `seq` received (and handled). */
  get lastSeq(): number {
    return this._lastSeq;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /**
   * Have the server replay the frames after `seq` again, though they were handled before
   * (by this page, or by the page before a reload): how a reloaded page rebuilds a chat turn
   * that started before the reload. Replayed frames come with `replayed: true`; consumers
   * that keep state must ignore seqs they have applied. Only ever lowers the resume point;
   * without a stored session there is nothing to replay. When connected, the socket is
   * reopened at once to ask for the replay.
   */
  replayFrom(seq: number): void {
    if (this._disposed || !this._sessionId || !Number.isInteger(seq) || seq < 0) {
      return;
    }
    if (seq >= this._lastSeq) {
      return;
    }
    this._replayUntil = Math.max(this._replayUntil, this._lastSeq);
    this._lastSeq = seq;
    this._save();
    const socket = this._socket;
    if (socket) {
      // a fresh connection resumes from `seq`; the old one's close is ignored
      this._socket = null;
      this._welcomed = false;
      this._clearHeartbeat();
      socket.onclose = null;
      socket.onmessage = null;
      socket.close(1000, 'replaying from an earlier seq');
      this.connect();
    }
  }

  /** Open the socket (again); resumes the stored session if there is one. */
  connect(): void {
    if (this._disposed || this._socket) {
      return;
    }
    this._clearRetry();
    this._setState(this._attempts ? 'reconnecting' : 'connecting');
    const query = new URLSearchParams();
    if (this._sessionId) {
      query.set('session_id', this._sessionId);
      query.set('last_seq', String(this._lastSeq));
    }
    const base = this._options.url;
    const url = query.toString()
      ? `${base}${base.includes('?') ? '&' : '?'}${query}`
      : base;
    this._expectSeq = this._sessionId ? this._lastSeq + 1 : null;
    let socket: IWebSocketLike;
    try {
      socket = this._createSocket(url);
    } catch (error) {
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    this._welcomed = false;
    socket.onmessage = ev => this._onMessage(socket, ev.data);
    socket.onclose = ev => this._onClose(socket, ev.code);
    socket.onerror = () => {
      /* onclose follows */
    };
  }

  /**
   * Send a request and resolve with its response payload; reject with a CloudIDEError for
   * an error response. Queued while the channel is not open.
   */
  request<T = any>(
    kind: string,
    payload: Record<string, unknown> = {},
    options: IRequestOptions = {}
  ): Promise<T> {
    if (this._disposed) {
      return Promise.reject(closedError('the channel is closed'));
    }
    const id = ++this._nextId;
    const frame = JSON.stringify({ type: 'request', id, payload: { kind, ...payload } });
    options.onId?.(id);
    return new Promise<T>((resolve, reject) => {
      const pending: IPending = { id, frame, resolve, reject, sent: false };
      this._pending.set(id, pending);
      const max = this._options.maxQueued ?? 100;
      const unsent = [...this._pending.values()].filter(p => !p.sent);
      if (unsent.length > max) {
        const oldest = unsent[0];
        this._pending.delete(oldest.id);
        oldest.reject(closedError('too many requests queued while offline'));
      }
      if (options.signal) {
        const abort = (): void => {
          if (this._pending.delete(id)) {
            reject(new CloudIDEError('the request was aborted', { status: 0, code: 'aborted' }));
          }
        };
        if (options.signal.aborted) {
          abort();
          return;
        }
        options.signal.addEventListener('abort', abort, { once: true });
      }
      this._flush();
    });
  }

  /** Close for good: pending requests are rejected. */
  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._clearRetry();
    this._clearHeartbeat();
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      socket.close(1000, 'closed by the client');
    }
    for (const pending of this._pending.values()) {
      pending.reject(closedError('the channel was closed'));
    }
    this._pending.clear();
    this._setState('closed');
    Signal.clearData(this);
  }

  // -- internals -------------------------------------------------------------------------

  private _onMessage(socket: IWebSocketLike, data: unknown): void {
    if (socket !== this._socket || typeof data !== 'string') {
      return;
    }
    let frame: IFrame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server never sends this; ignore rather than break the session
    }
    if (frame.type === 'welcome') {
      this._onWelcome(frame.payload as IWelcome);
      return;
    }
    if (frame.type === 'pong') {
      this._awaitingPong = false;
      return;
    }
    if (typeof frame.seq === 'number') {
      if (this._expectSeq !== null) {
        const expected = this._expectSeq;
        this._expectSeq = null;
        if (frame.seq > expected) {
          this._replayGap.emit({ expected, received: frame.seq });
        }
      }
      if (frame.seq <= this._lastSeq) {
        return; // replayed, already handled
      }
      this._lastSeq = frame.seq;
      this._save();
      if (frame.seq <= this._replayUntil) {
        frame.replayed = true;
      }
    }
    if (frame.type === 'response') {
      const pending = typeof frame.id === 'number' ? this._pending.get(frame.id) : undefined;
      if (pending) {
        this._pending.delete(pending.id);
        if (frame.error) {
          pending.reject(errorFromFrame(frame.error));
        } else {
          pending.resolve(frame.payload);
        }
      } else {
        this._unmatchedResponse.emit(frame);
      }
      return;
    }
    if (frame.type === 'event' || frame.type === 'stream') {
      this._frameReceived.emit(frame);
    }
  }

  private _onWelcome(welcome: IWelcome): void {
    const reset = this._sessionId !== null && !welcome.resumed;
    this._sessionId = welcome.session_id;
    if (!welcome.resumed) {
      this._expectSeq = null;
      this._replayUntil = 0;
    } else if (
      this._expectSeq !== null &&
      typeof welcome.last_seq === 'number' &&
      welcome.last_seq < this._expectSeq
    ) {
      this._expectSeq = null; // nothing to replay
    }
    if (reset) {
      // a new session: its seq starts again, and in-flight requests will not be answered
      this._lastSeq = welcome.last_seq ?? 0;
      for (const pending of [...this._pending.values()]) {
        if (pending.sent) {
          this._pending.delete(pending.id);
          pending.reject(
            closedError('the connection was lost and the server did not keep the session')
          );
        }
      }
    }
    this._save();
    this._welcomed = true;
    this._attempts = 0;
    this._setState('open');
    this._startHeartbeat((welcome.heartbeat_s ?? 30) * 1000);
    if (reset) {
      this._sessionReset.emit();
    }
    this._flush();
  }

  private _onClose(socket: IWebSocketLike, code: number): void {
    if (socket !== this._socket) {
      return;
    }
    this._socket = null;
    this._welcomed = false;
    this._clearHeartbeat();
    // requests sent but unanswered stay pending: the answer is replayed on resume
    if (this._disposed) {
      return;
    }
    if (code === TAKEN_OVER) {
      // another tab resumed our session (a duplicated tab copies sessionStorage): this tab
      // starts a session of its own
      this._sessionId = null;
      this._lastSeq = 0;
      this._replayUntil = 0;
      this._save();
    }
    if (FATAL_CLOSE_CODES.has(code)) {
      this._setState('closed');
      return;
    }
    this._scheduleReconnect();
  }

  private _scheduleReconnect(): void {
    this._setState('reconnecting');
    const { initialMs, factor, maxMs, jitter } = this._backoff;
    const base = Math.min(maxMs, initialMs * Math.pow(factor, this._attempts));
    const delay = Math.max(0, base * (1 + jitter * (2 * this._random() - 1)));
    this._attempts += 1;
    this._clearRetry();
    this._retry = this._setTimeout(() => {
      this._retry = null;
      this.connect();
    }, delay);
  }

  /** Send what is queued, in order, once the session is open. */
  private _flush(): void {
    const socket = this._socket;
    if (!socket || !this._welcomed || socket.readyState !== OPEN) {
      return;
    }
    for (const pending of this._pending.values()) {
      if (!pending.sent) {
        socket.send(pending.frame);
        pending.sent = true;
      }
    }
  }

  private _startHeartbeat(intervalMs: number): void {
    this._clearHeartbeat();
    const beat = (): void => {
      const socket = this._socket;
      if (!socket || socket.readyState !== OPEN) {
        return;
      }
      if (this._awaitingPong) {
        // no pong for a whole interval: the connection is dead though no close came
        socket.close(4000, 'heartbeat timeout');
        this._onClose(socket, 4000);
        return;
      }
      this._awaitingPong = true;
      socket.send(JSON.stringify({ type: 'ping', id: ++this._nextId }));
      this._heartbeat = this._setTimeout(beat, intervalMs);
    };
    this._awaitingPong = false;
    this._heartbeat = this._setTimeout(beat, intervalMs);
  }

  private _clearHeartbeat(): void {
    if (this._heartbeat !== null) {
      this._clearTimeout(this._heartbeat);
      this._heartbeat = null;
    }
    this._awaitingPong = false;
  }

  private _clearRetry(): void {
    if (this._retry !== null) {
      this._clearTimeout(this._retry);
      this._retry = null;
    }
  }

  private _setState(state: ChannelState): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _load(): { sessionId: string; lastSeq: number } | null {
    try {
      const raw = this._storage?.getItem(this._key);
      const parsed = raw ? JSON.parse(raw) : null;
      if (parsed && typeof parsed.sessionId === 'string' && Number.isInteger(parsed.lastSeq)) {
        return parsed;
      }
    } catch {
      /* unreadable storage: start a new session */
    }
    return null;
  }

  private _save(): void {
    try {
      if (this._sessionId) {
        this._storage?.setItem(
          this._key,
          JSON.stringify({ sessionId: this._sessionId, lastSeq: this._lastSeq })
        );
      } else {
        this._storage?.removeItem(this._key);
      }
    } catch {
      /* storage full or denied: resuming after a reload will not work, the rest does */
    }
  }

  private _options: IChannelOptions;
  private _backoff: { initialMs: number; factor: number; maxMs: number; jitter: number };
  private _createSocket: (url: string) => IWebSocketLike;
  private _storage: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  private _key: string;
  private _setTimeout: (fn: () => void, ms: number) => any;
  private _clearTimeout: (handle: any) => void;
  private _random: () => number;
  private _socket: IWebSocketLike | null = null;
  private _welcomed = false;
  private _sessionId: string | null;
  private _lastSeq: number;
  /** Frames up to this seq were delivered before `replayFrom()` lowered the resume point. */
  private _replayUntil = 0;
  /** After a resuming connect: the first seq the replay should start with. */
  private _expectSeq: number | null = null;
  private _nextId = 0;
  private _attempts = 0;
  private _retry: any = null;
  private _heartbeat: any = null;
  private _awaitingPong = false;
  private _pending = new Map<number, IPending>();
  private _state: ChannelState = 'closed';
  private _disposed = false;
  private _frameReceived = new Signal<this, IFrame>(this);
  private _stateChanged = new Signal<this, ChannelState>(this);
  private _sessionReset = new Signal<this, void>(this);
  private _unmatchedResponse = new Signal<this, IFrame>(this);
  private _replayGap = new Signal<this, IReplayGap>(this);
}

function closedError(message: string): CloudIDEError {
  return new CloudIDEError(message, { status: 0, code: 'connection_lost' });
}

/** The error of a `response` frame as the same typed error REST calls throw. */
export function errorFromFrame(error: IErrorBody): CloudIDEError {
  return new CloudIDEError(error.message || `request failed (${error.status ?? '?'})`, {
    status: error.status ?? 0,
    code: error.code,
    field: error.field,
    retryAfter: typeof error.retry_after_s === 'number' ? error.retry_after_s : null
  });
}

function safeSessionStorage(): Storage | null {
  try {
    return typeof sessionStorage === 'undefined' ? null : sessionStorage;
  } catch {
    return null;
  }
}
