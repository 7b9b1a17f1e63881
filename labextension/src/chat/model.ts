/**
 * The client state of one conversation, reduced from stored messages (REST) and session
 * channel frames. No DOM, no JupyterLab: the panel renders it, tests drive it directly.
 *
 * - `load()` builds the turns from `GET cloudide/api/conversations/<id>`;
 * - `applyFrame()` applies `stream`/`event` frames in seq order; a frame whose seq was
 *   applied before (a replay after a reload, a duplicate) is ignored, so replaying a turn
 *   from its `turn.started` rebuilds it exactly once;
 * - `beginTurn()`/`finishTurn()`/`failTurn()` follow one `chat.send` request.
 */

import { ISignal, Signal } from '@lumino/signaling';

import type { IFrame } from '../channel';
import { explainRequestError } from './explain';
import {
  addItem,
  addUsage,
  isEnded,
  isObject,
  replaceError,
  safeStringify,
  settleTools,
  str,
  toStatus,
  TurnOps
} from './turns';
import {
  IContextItem,
  IConversationDetail,
  IErrorItem,
  IToolItem,
  ITurn,
  ITurnResult,
  TurnItem,
  TurnStatus,
  WRITE_TOOLS
} from './types';

export { isEnded } from './turns';

export class ConversationModel {
  constructor(id: string | null = null, title = '') {
    this._id = id;
    this.title = title;
  }

  /** Emitted after every change (batched by the caller's event loop turn, not here). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The conversation id; null for a new conversation until its first turn starts. */
  get id(): string | null {
    return this._id;
  }

  title: string;

  get turns(): readonly ITurn[] {
    return this._turns;
  }

  /** The highest frame seq applied. */
  get lastSeq(): number {
    return this._lastSeq;
  }

  /** A turn that has not ended (sent or running), if any. */
  get activeTurn(): ITurn | null {
    for (let i = this._turns.length - 1; i >= 0; i--) {
      const turn = this._turns[i];
      if (turn.status === 'pending' || turn.status === 'running') {
        return turn;
      }
    }
    return null;
  }

  turnById(id: string): ITurn | null {
    return this._turns.find(t => t.id === id) ?? null;
  }

  turnByKey(key: string): ITurn | null {
    return this._turns.find(t => t.key === key) ?? null;
  }

  /** The tool card waiting on (or decided by) an approval. */
  toolByApproval(approvalId: string): { turn: ITurn; tool: IToolItem } | null {
    for (const turn of this._turns) {
      for (const item of turn.items) {
        if (item.type === 'tool' && item.approval?.id === approvalId) {
          return { turn, tool: item };
        }
      }
    }
    return null;
  }

  // -- stored messages --------------------------------------------------------------------

  /**
   * Build the turns from the stored conversation. Turns already built from frames (a turn
   * running while the page reloaded, replayed from its start) keep their live state, which
   * is newer than what was stored.
   */
  load(detail: IConversationDetail): void {
    this._id = detail.id;
    this.title = detail.title;
    const stored = this._ops.fromStored(detail.messages ?? []);
    const live = new Map(
      this._turns.filter(t => t.live && t.id).map(t => [t.id as string, t])
    );
    const merged: ITurn[] = [];
    for (const turn of stored) {
      const current = turn.id ? live.get(turn.id) : undefined;
      if (current && current.status === 'incomplete' && isEnded(turn.status) &&
          turn.status !== 'incomplete') {
        // its end was missed (the session was lost): what was stored is the truth now
        turn.usage = current.usage;
        live.delete(turn.id as string);
        merged.push(turn);
      } else if (current) {
        if (current.startedSeq === null) {
          // not rebuilt from its frames (they were lost): what was stored is all there is
          current.items = turn.items;
          current.model = current.model ?? turn.model;
          current.modelReason = current.modelReason ?? turn.modelReason;
          this._openText.delete(current.key);
          if (isEnded(turn.status) && turn.status !== 'incomplete') {
            current.status = turn.status;
          }
        }
        if (!current.user && turn.user) {
          current.user = turn.user;
        }
        current.rev++;
        live.delete(turn.id as string);
        merged.push(current);
      } else {
        merged.push(turn);
      }
    }
    // live turns not stored yet, and turns still waiting for their id, stay at the end
    for (const turn of this._turns) {
      if ((turn.id && live.has(turn.id)) || (!turn.id && !isEnded(turn.status))) {
        merged.push(turn);
      }
    }
    for (const turn of merged) {
      if (!turn.live) {
        settleTools(turn);
      }
    }
    this._turns = merged;
    this._emit();
  }

  // -- one request ------------------------------------------------------------------------

  /** A message the user just sent: shown at once, bound to its turn id when it starts. */
  beginTurn(text: string, context: IContextItem[], task: string | null,
    requestId: number | null = null): ITurn {
    const turn = this._ops.newTurn(`local-${this._ops.next()}`, null);
    turn.user = { text, context, task };
    turn.status = 'pending';
    turn.requestId = requestId;
    turn.live = true;
    this._turns.push(turn);
    this._emit();
    return turn;
  }

  setRequestId(turn: ITurn, requestId: number): void {
    turn.requestId = requestId;
  }

  /**
   * A turn known from elsewhere before its frames come (a page reload found it running in
   * sessionStorage): shown as running, rebuilt from its replayed frames.
   */
  restoreRunningTurn(turnId: string, user: ITurn['user']): ITurn {
    let turn = this.turnById(turnId);
    if (!turn) {
      turn = this._ops.newTurn(turnId, turnId);
      this._turns.push(turn);
    }
    if (user && !turn.user) {
      turn.user = user;
    }
    turn.live = true;
    turn.status = 'running';
    turn.rev++;
    this._emit();
    return turn;
  }

  /** The final response of `chat.send` (live, or replayed after a reload). */
  finishTurn(result: ITurnResult): void {
    let turn = this.turnById(result.turn_id);
    if (!turn) {
      turn = this._pendingTurn(null);
      if (!turn) {
        return;
      }
      if (this._id === null && result.conversation_id) {
        this._id = result.conversation_id;
      }
      this._bind(turn, result.turn_id, null);
    }
    this._end(turn, toStatus(result.status), result.error ?? null);
    if (result.model && !turn.model) {
      turn.model = result.model;
    }
    this._emit();
  }

  /** `chat.send` was refused (rate limit, model not allowed, ...) or its answer was lost. */
  failTurn(turn: ITurn, error: unknown): void {
    if (isEnded(turn.status)) {
      return;
    }
    const explanation = explainRequestError(error);
    if (turn.id && explanation.kind === 'connection') {
      turn.status = 'incomplete';
    } else {
      turn.status = 'error';
    }
    const item: IErrorItem = { type: 'error', key: this._ops.itemKey(turn, 'e'), rev: 0,
      status: turn.status, message: explanation.detail, explanation };
    replaceError(turn, item);
    settleTools(turn);
    turn.rev++;
    this._emit();
  }

  // -- approvals and undo -------------------------------------------------------------------

  /** The user decided: the card shows the decision until the tool's result comes. */
  markDecision(approvalId: string, decision: 'allow' | 'deny' | 'always'): void {
    const found = this.toolByApproval(approvalId);
    if (!found || found.tool.state !== 'awaiting_approval') {
      return;
    }
    const { turn, tool } = found;
    tool.decision = decision;
    tool.approvalError = null;
    tool.state = decision === 'deny' ? 'denied' : 'approved';
    this._touch(turn, tool);
  }

  /** The server refused the decision (already decided, expired, ...). */
  decisionFailed(approvalId: string, error: unknown): void {
    const found = this.toolByApproval(approvalId);
    if (!found) {
      return;
    }
    const { turn, tool } = found;
    const explanation = explainRequestError(error);
    tool.approvalError = `${explanation.title}: ${explanation.detail}`;
    if (explanation.kind !== 'conflict' && (tool.state === 'approved' || tool.state === 'denied')
      && tool.result === null) {
      tool.state = 'awaiting_approval'; // may be retried
    }
    tool.decision = null;
    this._touch(turn, tool);
  }

  /** Whether the turn's changes can be undone from here. */
  canUndo(turn: ITurn): boolean {
    return !!turn.id && isEnded(turn.status) && !turn.undone && !turn.undoing &&
      turn.items.some(i => i.type === 'tool' && i.edits);
  }

  setUndoing(turn: ITurn, undoing: boolean): void {
    turn.undoing = undoing;
    turn.rev++;
    this._emit();
  }

  markUndone(turn: ITurn, restored: number): void {
    turn.undone = true;
    turn.undoing = false;
    this._ops.notice(turn, 'undo', `Undone: ${restored} change${restored === 1 ? '' : 's'} put back.`);
    this._emit();
  }

  noteOnTurn(turn: ITurn, text: string): void {
    this._ops.notice(turn, 'note', text);
    this._emit();
  }

  // -- frames -----------------------------------------------------------------------------

  /**
   * Apply one `stream`/`event` frame. Returns false when it is not for this conversation,
   * or its seq was applied before.
   */
  applyFrame(frame: IFrame): boolean {
    const payload = frame.payload;
    if (!isObject(payload) || (frame.type !== 'stream' && frame.type !== 'event')) {
      return false;
    }
    if (typeof frame.seq === 'number' && frame.seq <= this._lastSeq) {
      return false;
    }
    const applied = frame.type === 'stream'
      ? this._applyStream(payload)
      : this._applyEvent(frame, payload);
    if (applied && typeof frame.seq === 'number') {
      this._lastSeq = frame.seq;
    }
    if (applied) {
      this._emit();
    }
    return applied;
  }

  /** Whether a frame belongs to this conversation (without applying it). */
  owns(frame: IFrame): boolean {
    const p = frame.payload;
    if (!isObject(p)) {
      return false;
    }
    if (typeof p.conversation_id === 'string' && p.conversation_id) {
      if (p.conversation_id === this._id) {
        return true;
      }
      // the first turn of a new conversation: the request id tells it is ours
      return this._id === null && p.kind === 'turn.started' &&
        this._pendingTurn(frame.id ?? null) !== null;
    }
    return typeof p.turn_id === 'string' && this.turnById(p.turn_id) !== null;
  }

  private _applyStream(p: any): boolean {
    if (typeof p.delta !== 'string' || typeof p.turn_id !== 'string') {
      return false;
    }
    let turn = this.turnById(p.turn_id);
    if (!turn) {
      if (p.conversation_id !== this._id || this._id === null) {
        return false;
      }
      // its turn.started was lost (a gap): the turn still shows
      turn = this._pendingTurn(null) ?? this._addTurn(p.turn_id);
      this._bind(turn, p.turn_id, null);
    }
    const last = turn.items[turn.items.length - 1];
    if (last && last.type === 'assistant' && last.key === this._openText.get(turn.key)) {
      last.text += p.delta;
      this._touch(turn, last);
    } else {
      const item = { type: 'assistant' as const, key: this._ops.itemKey(turn, 'a'), rev: 0,
        text: p.delta };
      addItem(turn, item);
      this._openText.set(turn.key, item.key);
    }
    return true;
  }

  private _applyEvent(frame: IFrame, p: any): boolean {
    const kind = p.kind;
    if (kind === 'turn.started') {
      return this._started(frame, p);
    }
    const turn = typeof p.turn_id === 'string' ? this.turnById(p.turn_id) : null;
    if (!turn) {
      return false;
    }
    switch (kind) {
      case 'prompt':
        turn.prompt = {
          model: str(p.model),
          tokens: typeof p.tokens === 'number' ? p.tokens : null,
          window: typeof p.window === 'number' ? p.window : null,
          context: (Array.isArray(p.items) ? p.items : [])
            .filter((i: any) => isObject(i) && typeof i.status === 'string')
            .map((i: any) => ({ title: String(i.title ?? i.path ?? i.kind ?? 'context'),
              status: String(i.status) }))
        };
        break;
      case 'model.call':
        turn.model = str(p.model);
        turn.modelReason = str(p.reason);
        this._openText.delete(turn.key); // a new step: its text is a new message
        break;
      case 'tool.call':
        this._ops.tool(turn, String(p.tool_call_id ?? ''), String(p.name ?? 'tool'));
        this._openText.delete(turn.key);
        break;
      case 'approval.request': {
        const tool = this._ops.tool(turn, String(p.tool_call_id ?? ''), String(p.name ?? 'tool'));
        tool.arguments = p.arguments ?? null;
        tool.argumentsText = tool.argumentsText ?? safeStringify(p.arguments);
        tool.approval = {
          id: String(p.approval_id ?? ''),
          argumentsHash: String(p.arguments_hash ?? ''),
          reason: String(p.reason ?? ''),
          risks: Array.isArray(p.risks) ? p.risks.map(String) : []
        };
        if (tool.state === 'running') {
          tool.state = 'awaiting_approval';
        }
        tool.rev++;
        break;
      }
      case 'tool.result': {
        const tool = this._ops.tool(turn, String(p.tool_call_id ?? ''), String(p.name ?? 'tool'));
        const data = isObject(p.data) ? p.data : {};
        tool.ok = p.ok !== false;
        tool.result = p.content === undefined ? null : String(p.content);
        tool.state = p.denied ? 'denied' : tool.ok ? 'done' : 'failed';
        tool.diff = typeof data.diff === 'string' && data.diff ? data.diff : tool.diff;
        tool.diffOmitted = data.diff_omitted === true;
        tool.path = typeof data.path === 'string' ? data.path : tool.path;
        tool.edits = tool.ok && !p.denied && WRITE_TOOLS.has(tool.name) &&
          (!!tool.diff || tool.diffOmitted || data.created === true);
        tool.decision = null;
        tool.rev++;
        break;
      }
      case 'turn.usage':
        turn.usage = addUsage(turn.usage, p);
        break;
      case 'model.fallback':
        this._ops.notice(turn, 'fallback',
          `${p.after ? `The model failed (${p.after}); ` : ''}trying ${p.model ?? 'another model'}` +
          `${p.reason ? ` (${p.reason})` : ''}.`);
        break;
      case 'model.retry':
        this._ops.notice(turn, 'retry',
          `Every allowed model failed${p.after ? ` (${p.after})` : ''}; retrying in ` +
          `${typeof p.wait_s === 'number' ? p.wait_s : '?'} s.`);
        break;
      case 'history.summarized':
        this._ops.notice(turn, 'summary',
          `Earlier turns (${p.turns ?? '?'}) were summarised for the model` +
          `${p.model ? ` by ${p.model}` : ''}.`);
        break;
      case 'turn.error':
        this._end(turn, toStatus(String(p.status ?? 'error')), str(p.message));
        break;
      default:
        return false;
    }
    turn.rev++;
    return true;
  }

  private _started(frame: IFrame, p: any): boolean {
    const turnId = p.turn_id;
    if (typeof turnId !== 'string') {
      return false;
    }
    if (this._id === null) {
      if (typeof p.conversation_id !== 'string' || !this._pendingTurn(frame.id ?? null)) {
        return false;
      }
      this._id = p.conversation_id;
    } else if (p.conversation_id !== this._id) {
      return false;
    }
    let turn = this.turnById(turnId) ?? this._pendingTurn(frame.id ?? null);
    if (turn && turn.id === turnId && turn.startedSeq !== null) {
      return false; // started twice without a seq: nothing new
    }
    if (!turn) {
      turn = this._addTurn(turnId);
    } else if (turn.id === turnId) {
      // known from stored messages or from a reload record: rebuild it from its frames
      turn.items = [];
      turn.usage = null;
      turn.prompt = null;
      this._openText.delete(turn.key);
    }
    this._bind(turn, turnId, typeof frame.seq === 'number' ? frame.seq : null);
    turn.status = 'running';
    turn.rev++;
    return true;
  }

  // -- helpers ----------------------------------------------------------------------------

  private _addTurn(turnId: string): ITurn {
    const turn = this._ops.newTurn(turnId, turnId);
    turn.live = true;
    this._turns.push(turn);
    return turn;
  }

  /** The oldest turn sent but not yet started (for `requestId`, that request's). */
  private _pendingTurn(requestId: number | null): ITurn | null {
    const waiting = this._turns.filter(t => t.status === 'pending' && !t.id);
    if (requestId !== null) {
      const exact = waiting.find(t => t.requestId === requestId);
      if (exact) {
        return exact;
      }
      if (waiting.some(t => t.requestId !== null)) {
        return null; // another request's frame
      }
    }
    return waiting[0] ?? null;
  }

  private _bind(turn: ITurn, turnId: string, seq: number | null): void {
    turn.id = turnId;
    turn.live = true;
    if (seq !== null) {
      turn.startedSeq = seq;
    }
    if (turn.status === 'pending') {
      turn.status = 'running';
    }
    turn.rev++;
  }

  private _end(turn: ITurn, status: TurnStatus, message: string | null): void {
    if (isEnded(turn.status) && turn.status !== 'incomplete' &&
        turn.items.some(i => i.type === 'error')) {
      return; // turn.error came first; the response repeats it
    }
    turn.status = status;
    this._openText.delete(turn.key);
    if (status !== 'ok') {
      this._ops.setError(turn, status, message ?? '');
    } else {
      turn.items = turn.items.filter(i => i.type !== 'error'); // e.g. "connection lost"
    }
    settleTools(turn);
    turn.rev++;
  }

  private _touch(turn: ITurn, item: TurnItem): void {
    item.rev++;
    turn.rev++;
    this._emit();
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _id: string | null;
  private _turns: ITurn[] = [];
  private _lastSeq = 0;
  private _ops = new TurnOps();
  /** turn key → the assistant item the next delta appends to */
  private _openText = new Map<string, string>();
  private _changed = new Signal<this, void>(this);
}

