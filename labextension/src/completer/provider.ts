/**
 * The inline completion provider: ghost text from the server's completion model, streamed.
 *
 * One `complete` request on the session channel per fetch; its `stream` frames (correlated
 * by the request's frame id, and pinned to the first frame's `completion_id`) grow the
 * suggestion, the response's `text` is the final, authoritative one.
 *
 * - Debouncing is JupyterLab's: the inline completer waits `debouncerDelay` (ours defaults
 *   to 300 ms) after the last keystroke and never calls `fetch` for a request already stale.
 * - A newer fetch supersedes the one running: the older fetch resolves to no items (or its
 *   stream ends where it is), its request is aborted on the channel, and the server cancels
 *   it when the newer `complete` of the same session arrives.
 * - `fetch` resolves at the first streamed text (or the response, when it comes first) with
 *   one item: `isIncomplete` plus a `token` while the model is still writing; `stream(token)`
 *   yields the growing text and, last, the response's text. An empty answer is no item.
 * - 404 (no completion model) and 403 switch the provider off quietly until the settings
 *   change or the page reloads; 429 (and 503) back off for `retry_after_s`; a lost
 *   connection or any other failure gives no items (failures are logged, not shown).
 * - "On once a completion model is configured": `checkModels()` reads `GET models`; when
 *   no model has the `completion` role, typing asks nothing, but an explicit invocation
 *   still tries once (the server's `completion_model` may name a model without that role).
 *
 * Nothing here imports JupyterLab at run time (types only): tested against a real
 * SessionChannel on a scripted socket.
 */

import type {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider
} from '@jupyterlab/completer';
import type { ISettingRegistry } from '@jupyterlab/settingregistry';
import type { LabIcon } from '@jupyterlab/ui-components';
import type { JSONValue } from '@lumino/coreutils';
import type { ISignal } from '@lumino/signaling';

import type { ChannelState, IFrame, IRequestOptions } from '../channel';
import { CloudIDEError } from '../errors';
import { DEFAULT_MAX_CHARS, fromWidget, ICompletionInput } from './context';

/** `InlineCompletionTriggerKind.Invoke` (a const here: the enum's module is not loaded). */
const TRIGGER_INVOKE = 0;

/** What the provider uses of the session channel (a `SessionChannel`). */
export interface ICompletionChannel {
  readonly state: ChannelState;
  readonly isDisposed: boolean;
  readonly frameReceived: ISignal<any, IFrame>;
  readonly stateChanged: ISignal<any, ChannelState>;
  request<T = any>(kind: string, payload?: Record<string, unknown>,
    options?: IRequestOptions): Promise<T>;
}

/** The response of a `complete` request (api.yaml WsComplete). */
export interface ICompleteResponse {
  completion_id: string;
  text: string;
  model?: string;
  cached?: boolean;
  fim?: boolean;
  status: 'ok' | 'cancelled' | string;
}

/** What `checkModels` reads of `GET cloudide/api/models`. */
export interface IModelListLike {
  models: { id: string; roles?: string[] }[];
  /** The server's configured completion model, should it ever say so. */
  completion_model?: string | null;
}

/** Settings of the provider (JupyterLab's "Inline Completer" settings, our section). */
export interface ICompleterSettings {
  enabled: boolean;
  debouncerDelay: number;
  timeout: number;
  autoFillInMiddle: boolean;
  maxPrefixChars: number;
  maxSuffixChars: number;
  maxTokens: number;
  /** A model id; empty: the server's completion model. */
  model: string;
}

export const DEFAULT_COMPLETER_SETTINGS: ICompleterSettings = {
  enabled: true,
  // JupyterLab's default is 0 (a request per keystroke); a model call costs tokens
  debouncerDelay: 300,
  // until the first token; the server's own model timeout is 15 s
  timeout: 10_000,
  autoFillInMiddle: false,
  maxPrefixChars: DEFAULT_MAX_CHARS,
  maxSuffixChars: DEFAULT_MAX_CHARS,
  maxTokens: 128,
  model: ''
};

export interface IProviderOptions {
  channel: ICompletionChannel;
  /** `GET cloudide/api/models`; without it, the first request finds out. */
  listModels?: () => Promise<IModelListLike>;
  icon?: LabIcon.ILabIcon;
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (handle: any) => void;
  log?: Pick<Console, 'warn' | 'debug'>;
}

/** One step of `stream()`: the whole suggestion so far. */
export interface IStreamStep {
  response: IInlineCompletionItem;
  done: boolean;
}

/** Why `fetch` asks nothing (for tests and the status of the provider). */
export type Availability = 'unknown' | 'available' | 'none';

/** Back-off when a 429/503 says nothing of when to retry (seconds). */
const DEFAULT_RETRY_S = 10;
/** The same failure is logged at most this often (ms). */
const LOG_EVERY_MS = 60_000;

const EMPTY: IInlineCompletionList = { items: [] };

/** One `complete` request and what came back for it so far. */
class Pending {
  constructor(readonly token: string) {}
  requestId: number | null = null;
  completionId: string | null = null;
  text = '';
  /** What `fetch` resolved with (the stream starts from there). */
  shown = '';
  done = false;
  /** A newer fetch, a timeout or a lost connection ended it: no more updates. */
  dropped = false;
  error: string | null = null;
  readonly abort = new AbortController();

  changed(): Promise<void> {
    return new Promise(resolve => this._waiters.push(resolve));
  }

  notify(): void {
    const waiters = this._waiters;
    this._waiters = [];
    for (const resolve of waiters) {
      resolve();
    }
  }

  private _waiters: (() => void)[] = [];
}

export class CloudIDEInlineProvider implements IInlineCompletionProvider {
  static readonly ID = 'jupyter-cloudide';

  readonly identifier = CloudIDEInlineProvider.ID;
  readonly name = 'AI IDE';
  readonly icon: LabIcon.ILabIcon | undefined;

  constructor(options: IProviderOptions) {
    this._channel = options.channel;
    this._listModels = options.listModels ?? null;
    this.icon = options.icon;
    this._now = options.now ?? (() => Date.now());
    this._setTimeout = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? (handle => clearTimeout(handle));
    this._log = options.log ?? console;
    this._channel.frameReceived.connect(this._onFrame, this);
    this._channel.stateChanged.connect(this._onState, this);
  }

  /** Settings shown under "AI IDE provider" in JupyterLab's Inline Completer settings. */
  get schema(): ISettingRegistry.IProperty {
    return {
      properties: {
        maxPrefixChars: {
          title: 'Context before the cursor (characters)',
          description:
            'At most this much of the notebook or file before the cursor is sent (the ' +
            'nearest part); the server trims further to its own budget.',
          type: 'number',
          minimum: 0
        },
        maxSuffixChars: {
          title: 'Context after the cursor (characters)',
          description: 'At most this much of the text after the cursor is sent.',
          type: 'number',
          minimum: 0
        },
        maxTokens: {
          title: 'Maximum completion length (tokens)',
          type: 'number',
          minimum: 1,
          maximum: 1024
        },
        model: {
          title: 'Model',
          description:
            'A model id from the server; empty uses the server\'s completion model.',
          type: 'string'
        }
      },
      default: { ...DEFAULT_COMPLETER_SETTINGS } as any
    };
  }

  /** JupyterLab's settings for this provider changed (also called once at start-up). */
  configure(settings: { [property: string]: JSONValue }): void {
    const merged = { ...DEFAULT_COMPLETER_SETTINGS, ...(settings as any) };
    this._settings = {
      ...merged,
      maxPrefixChars: nonNegative(merged.maxPrefixChars, DEFAULT_COMPLETER_SETTINGS.maxPrefixChars),
      maxSuffixChars: nonNegative(merged.maxSuffixChars, DEFAULT_COMPLETER_SETTINGS.maxSuffixChars),
      maxTokens: Math.min(1024, Math.max(1, Math.round(
        nonNegative(merged.maxTokens, DEFAULT_COMPLETER_SETTINGS.maxTokens)))),
      timeout: nonNegative(merged.timeout, DEFAULT_COMPLETER_SETTINGS.timeout),
      model: typeof merged.model === 'string' ? merged.model.trim() : ''
    };
    // "off until the settings change": they changed, try again
    if (this._disabled !== null || this._availability === 'none') {
      this._disabled = null;
      void this.checkModels();
    }
  }

  get settings(): Readonly<ICompleterSettings> {
    return this._settings;
  }

  /** Whether a completion model is known to exist ('unknown' until checked or asked). */
  get availability(): Availability {
    return this._availability;
  }

  /** Why completions are off (a 404/403), or null. */
  get disabledReason(): string | null {
    return this._disabled;
  }

  /** Until when (ms, `now()` clock) a 429/503 keeps requests back; 0 when not. */
  get blockedUntil(): number {
    return this._blockedUntil;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /**
   * Read `GET models`: is there a model with the `completion` role? Failures leave the
   * availability as it was (requests then find out). A request that succeeded wins over a
   * list that shows none.
   */
  async checkModels(): Promise<void> {
    if (!this._listModels) {
      return;
    }
    const check = ++this._checks;
    let list: IModelListLike;
    try {
      list = await this._listModels();
    } catch (error) {
      this._log.debug('jupyter_cloudide: could not list models for completions', error);
      return;
    }
    if (check !== this._checks || this._isDisposed) {
      return;
    }
    const models = Array.isArray(list?.models) ? list.models : [];
    const found =
      !!list?.completion_model ||
      models.some(m => Array.isArray(m?.roles) && m.roles.includes('completion'));
    if (found || !this._confirmed) {
      this._availability = found ? 'available' : 'none';
    }
  }

  async fetch(
    request: CompletionHandler.IRequest,
    context: IInlineCompletionContext
  ): Promise<IInlineCompletionList> {
    // whatever this one does, the one before is stale: the editor moved on
    this._drop(this._active);
    for (const [token, old] of this._streams) {
      if (old.done || old.dropped) {
        this._streams.delete(token); // finished, and its stream (if any) long started
      }
    }
    if (this._isDisposed || !this._mayAsk(context.triggerKind)) {
      return EMPTY;
    }
    let input: ICompletionInput | null;
    try {
      input = fromWidget(context.widget, request, {
        maxPrefixChars: this._settings.maxPrefixChars,
        maxSuffixChars: this._settings.maxSuffixChars
      });
    } catch (error) {
      this._warn('could not read the editor', error);
      return EMPTY;
    }
    if (!input || (!input.prefix.trim() && !input.suffix.trim())) {
      return EMPTY;
    }
    const channel = this._channel;
    if (channel.isDisposed || (channel.state !== 'open' && channel.state !== 'connecting')) {
      return EMPTY; // offline: a queued request would only be stale when it goes out
    }

    const pending = new Pending(`cloudide-${++this._counter}`);
    this._active = pending;
    this._streams.set(pending.token, pending);
    const payload: Record<string, unknown> = { ...input, max_tokens: this._settings.maxTokens };
    if (this._settings.model) {
      payload.model = this._settings.model;
    }
    channel
      .request<ICompleteResponse>('complete', payload, {
        signal: pending.abort.signal,
        onId: id => {
          pending.requestId = id;
        }
      })
      .then(
        response => this._onResponse(pending, response),
        error => this._onError(pending, error)
      );

    const limit = this._settings.timeout;
    const timer =
      limit > 0
        ? this._setTimeout(() => {
          if (!pending.done && pending.text === '') {
            this._drop(pending);
          }
        }, limit)
        : null;
    while (!pending.done && !pending.dropped && pending.text === '') {
      await pending.changed();
    }
    if (timer !== null) {
      this._clearTimeout(timer);
    }
    if (pending.dropped || pending.text === '') {
      this._forget(pending);
      return EMPTY;
    }
    pending.shown = pending.text;
    if (pending.done) {
      this._forget(pending);
      return { items: [{ insertText: pending.text }] };
    }
    return {
      items: [{ insertText: pending.text, isIncomplete: true, token: pending.token }]
    };
  }

  /**
   * The rest of a streamed suggestion: the whole text so far at each step, last the
   * response's text (`done`). Ends early, without a last step, when a newer fetch took
   * over. Never throws.
   */
  async *stream(token: string): AsyncGenerator<IStreamStep, void, unknown> {
    const pending = this._streams.get(token);
    if (!pending) {
      return;
    }
    let shown = pending.shown;
    try {
      for (;;) {
        if (pending.dropped) {
          return;
        }
        if (pending.done) {
          const last: IInlineCompletionItem = { insertText: pending.text, isIncomplete: false };
          if (pending.error) {
            last.error = { message: pending.error };
          }
          yield { response: last, done: true };
          return;
        }
        if (pending.text !== shown) {
          shown = pending.text;
          yield { response: { insertText: shown, isIncomplete: true, token }, done: false };
          continue;
        }
        await pending.changed();
      }
    } finally {
      this._forget(pending);
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._drop(this._active);
    this._channel.frameReceived.disconnect(this._onFrame, this);
    this._channel.stateChanged.disconnect(this._onState, this);
  }

  // -- internals -------------------------------------------------------------------------

  private _mayAsk(trigger: number): boolean {
    if (this._disabled !== null) {
      return false;
    }
    if (this._now() < this._blockedUntil) {
      return false;
    }
    // no completion model listed: typing asks nothing, an explicit invocation tries
    return this._availability !== 'none' || trigger === TRIGGER_INVOKE;
  }

  private _onFrame(_: unknown, frame: IFrame): void {
    const pending = this._active;
    if (
      !pending ||
      pending.done ||
      frame.type !== 'stream' ||
      frame.replayed ||
      pending.requestId === null ||
      frame.id !== pending.requestId
    ) {
      return;
    }
    const payload = frame.payload;
    if (!payload || typeof payload.delta !== 'string') {
      return;
    }
    if (typeof payload.completion_id === 'string') {
      if (pending.completionId === null) {
        pending.completionId = payload.completion_id;
      } else if (pending.completionId !== payload.completion_id) {
        return; // another completion's frame under a reused id (a page before a reload)
      }
    }
    if (payload.delta) {
      pending.text += payload.delta;
      pending.notify();
    }
  }

  private _onState(_: unknown, state: ChannelState): void {
    if (state === 'reconnecting' || state === 'closed') {
      this._drop(this._active); // the answer may come after a resume: too late to show
    }
  }

  private _onResponse(pending: Pending, response: ICompleteResponse | undefined): void {
    if (pending.dropped) {
      return;
    }
    this._confirmed = true;
    this._availability = 'available';
    if (response?.status === 'cancelled') {
      pending.text = '';
    } else if (typeof response?.text === 'string') {
      pending.text = response.text; // authoritative (cleaned by the server)
    }
    this._settle(pending);
  }

  private _onError(pending: Pending, error: unknown): void {
    if (pending.dropped) {
      return; // aborted by us
    }
    const status = error instanceof CloudIDEError ? error.status : 0;
    const message = error instanceof Error ? error.message : String(error);
    if (status === 404 || status === 403) {
      // no completion model (or not ours to use): off, quietly, until the settings change
      this._disabled = message || `HTTP ${status}`;
      this._availability = 'none';
      this._log.debug(`jupyter_cloudide: inline completions off: ${this._disabled}`);
    } else if (status === 429 || status === 503) {
      const retry =
        error instanceof CloudIDEError && error.retryAfter !== null
          ? error.retryAfter
          : DEFAULT_RETRY_S;
      this._blockedUntil = Math.max(this._blockedUntil, this._now() + retry * 1000);
    } else if (status === 0) {
      // the connection: nothing to show
    } else {
      this._warn('completion failed', message);
      if (pending.text !== '') {
        pending.error = message; // shown as the ghost text's error mark, not a dialog
      }
    }
    pending.text = '';
    this._settle(pending);
  }

  private _settle(pending: Pending): void {
    pending.done = true;
    if (this._active === pending) {
      this._active = null;
    }
    pending.notify();
  }

  /** End a request early: its fetch gives nothing, its stream stops where it is. */
  private _drop(pending: Pending | null): void {
    if (!pending || pending.dropped) {
      return;
    }
    if (!pending.done) {
      pending.dropped = true;
      pending.abort.abort();
    }
    if (this._active === pending) {
      this._active = null;
    }
    this._forget(pending);
    pending.notify();
  }

  private _forget(pending: Pending): void {
    if (this._streams.get(pending.token) === pending) {
      this._streams.delete(pending.token);
    }
  }

  private _warn(what: string, detail: unknown): void {
    const key = `${what}: ${detail instanceof Error ? detail.message : String(detail)}`;
    const now = this._now();
    if (key === this._lastLog && now - this._lastLogAt < LOG_EVERY_MS) {
      return;
    }
    this._lastLog = key;
    this._lastLogAt = now;
    this._log.warn(`jupyter_cloudide: inline completion: ${key}`);
  }

  private _channel: ICompletionChannel;
  private _listModels: (() => Promise<IModelListLike>) | null;
  private _now: () => number;
  private _setTimeout: (fn: () => void, ms: number) => any;
  private _clearTimeout: (handle: any) => void;
  private _log: Pick<Console, 'warn' | 'debug'>;
  private _settings: ICompleterSettings = { ...DEFAULT_COMPLETER_SETTINGS };
  private _availability: Availability = 'unknown';
  /** A request was answered: the server has a completion model, whatever the list says. */
  private _confirmed = false;
  private _disabled: string | null = null;
  private _blockedUntil = 0;
  private _active: Pending | null = null;
  private _streams = new Map<string, Pending>();
  private _counter = 0;
  private _checks = 0;
  private _lastLog = '';
  private _lastLogAt = 0;
  private _isDisposed = false;
}

function nonNegative(value: unknown, fallback: number): number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : fallback;
}
