/**
 * The chat client without its view: conversations, models, sending, approvals, undo, and
 * routing the session channel's frames to the conversation each belongs to (a turn keeps
 * streaming into its conversation while another one is shown). No DOM, no JupyterLab: the
 * channel and the REST calls are injected, so the whole flow - including a page reload in
 * the middle of a turn - is unit-tested.
 */

import { ISignal, Signal } from '@lumino/signaling';

import type { ChannelState, IFrame, IReplayGap, IRequestOptions } from '../channel';
import { CloudIDEError } from '../errors';
import { explainRequestError, IExplanation } from './explain';
import { InflightStore } from './inflight';
import { ConversationModel, isEnded } from './model';
import type {
  IContextItem,
  IConversationDetail,
  IConversationInfo,
  IModelList,
  IToolItem,
  ITurn,
  ITurnResult,
  TaskName
} from './types';

/** The part of `SessionChannel` the chat uses. */
export interface IChatChannel {
  readonly frameReceived: ISignal<any, IFrame>;
  readonly unmatchedResponse: ISignal<any, IFrame>;
  readonly sessionReset: ISignal<any, void>;
  readonly replayGap: ISignal<any, IReplayGap>;
  readonly stateChanged: ISignal<any, ChannelState>;
  readonly state: ChannelState;
  readonly sessionId: string | null;
  request<T = any>(kind: string, payload?: Record<string, unknown>,
    options?: IRequestOptions): Promise<T>;
  replayFrom(seq: number): void;
  connect(): void;
}

/** The REST calls the chat uses (`api.ts` implements them with `requestAPI`). */
export interface IChatApi {
  listConversations(): Promise<IConversationInfo[]>;
  getConversation(id: string): Promise<IConversationDetail>;
  renameConversation(id: string, title: string): Promise<IConversationInfo>;
  deleteConversation(id: string): Promise<void>;
  listModels(): Promise<IModelList>;
}

export class ChatController {
  constructor(channel: IChatChannel, api: IChatApi, inflight = new InflightStore()) {
    this._channel = channel;
    this._api = api;
    this._inflight = inflight;
    this._current = this._draft = this._newDraft();
  }

  /** The conversation list, the models or the connection changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Another conversation is shown. */
  get currentChanged(): ISignal<this, ConversationModel> {
    return this._currentChanged;
  }

  get current(): ConversationModel {
    return this._current;
  }

  get conversations(): readonly IConversationInfo[] {
    return this._conversations;
  }

  get conversationsError(): IExplanation | null {
    return this._conversationsError;
  }

  /** null until loaded. */
  get models(): IModelList | null {
    return this._models;
  }

  get modelsError(): IExplanation | null {
    return this._modelsError;
  }

  get connection(): ChannelState {
    return this._channel.state;
  }

  /** The model asked for ('' lets the server's router choose). */
  selectedModel = '';
  task: TaskName = 'agent';

  /**
   * Listen to the channel, rebuild turns that were running before a page reload (replayed
   * from their start), load the lists and connect.
   */
  start(): void {
    if (this._started) {
      return;
    }
    this._started = true;
    const ch = this._channel;
    ch.frameReceived.connect(this._onFrame, this);
    ch.unmatchedResponse.connect(this._onResponse, this);
    ch.sessionReset.connect(this._onSessionReset, this);
    ch.replayGap.connect(this._onGap, this);
    ch.stateChanged.connect(this._emitChanged, this);

    const running = this._inflight.list(ch.sessionId);
    for (const record of running) {
      const model = this._modelFor(record.conversationId);
      model.restoreRunningTurn(record.turnId,
        { text: record.text, context: record.context, task: record.task });
      this._turns.set(record.turnId, model);
    }
    const point = this._inflight.replayPoint(ch.sessionId);
    const last = this._inflight.current();
    if (point !== null) {
      ch.replayFrom(point);
      this._setCurrent(this._modelFor(running[running.length - 1].conversationId));
    } else if (last && /^[0-9a-f-]{36}$/.test(last)) {
      this._setCurrent(this._modelFor(last)); // the conversation shown before the reload
    }
    ch.connect();
    void this.refreshConversations();
    void this.refreshModels();
    const shown = new Set(running.map(r => this._modelFor(r.conversationId)));
    if (this._current.id) {
      shown.add(this._current);
    }
    for (const model of shown) {
      void this.reload(model);
    }
  }

  dispose(): void {
    Signal.disconnectReceiver(this);
    Signal.clearData(this);
  }

  // -- lists --------------------------------------------------------------------------------

  async refreshConversations(): Promise<void> {
    try {
      this._conversations = await this._api.listConversations();
      this._conversationsError = null;
    } catch (error) {
      this._conversationsError = explainRequestError(error);
    }
    this._emitChanged();
  }

  async refreshModels(): Promise<void> {
    try {
      const list = await this._api.listModels();
      this._models = { ...list, models: Array.isArray(list?.models) ? list.models : [] };
      this._modelsError = null;
      if (this.selectedModel && !this._models.models.some(m => m.id === this.selectedModel)) {
        this.selectedModel = '';
      }
    } catch (error) {
      this._modelsError = explainRequestError(error);
    }
    this._emitChanged();
  }

  /** Reload a conversation's stored messages (merged with what is live). */
  async reload(model: ConversationModel): Promise<void> {
    const id = model.id;
    if (!id) {
      return;
    }
    try {
      model.load(await this._api.getConversation(id));
      this._forgetEnded(model);
    } catch (error) {
      const explanation = explainRequestError(error);
      this._loadErrors.set(id, explanation);
      this._emitChanged();
    }
  }

  loadError(model: ConversationModel): IExplanation | null {
    return model.id ? this._loadErrors.get(model.id) ?? null : null;
  }

  // -- conversations --------------------------------------------------------------------------

  async open(id: string): Promise<void> {
    const model = this._modelFor(id);
    this._setCurrent(model);
    this._loadErrors.delete(id);
    await this.reload(model);
  }

  /** Show an empty conversation; the server creates it with the first message. */
  newConversation(): void {
    if (this._draft.turns.length || this._draft.id) {
      this._draft = this._newDraft();
    }
    this._setCurrent(this._draft);
  }

  async rename(id: string, title: string): Promise<void> {
    const updated = await this._api.renameConversation(id, title);
    const model = this._models_.get(id);
    if (model) {
      model.title = updated.title;
    }
    this._conversations = this._conversations.map(c => (c.id === id ? { ...c, ...updated } : c));
    this._emitChanged();
  }

  async remove(id: string): Promise<void> {
    const model = this._models_.get(id);
    const active = model?.activeTurn;
    if (active?.id) {
      await this._channel.request('chat.cancel', { turn_id: active.id }).catch(() => undefined);
    }
    await this._api.deleteConversation(id);
    this._models_.delete(id);
    this._conversations = this._conversations.filter(c => c.id !== id);
    if (this._current === model) {
      this.newConversation();
    }
    this._emitChanged();
  }

  // -- a turn ---------------------------------------------------------------------------------

  /** Send a message in the current conversation; resolves when the turn ends. */
  async send(text: string, context: IContextItem[] = []): Promise<void> {
    const model = this._current;
    if (!text.trim() || model.activeTurn) {
      return;
    }
    const task = this.task;
    const turn = model.beginTurn(text, context, task);
    const payload: Record<string, unknown> = { text, task };
    if (model.id) {
      payload.conversation_id = model.id;
    }
    if (this.selectedModel) {
      payload.model = this.selectedModel;
    }
    if (context.length) {
      payload.context = context;
    }
    try {
      const result = await this._channel.request<ITurnResult>('chat.send', payload, {
        onId: id => model.setRequestId(turn, id)
      });
      this._finish(model, result);
    } catch (error) {
      model.failTurn(turn, error);
      if (turn.id) {
        this._inflight.remove(turn.id);
      }
    }
    this._cancelWanted.delete(turn);
    void this.refreshConversations();
  }

  /** Stop the current conversation's running turn. */
  async cancel(): Promise<void> {
    const turn = this._current.activeTurn;
    if (!turn) {
      return;
    }
    if (!turn.id) {
      this._cancelWanted.add(turn); // sent once the turn has an id
      return;
    }
    try {
      await this._channel.request('chat.cancel', { turn_id: turn.id });
    } catch (error) {
      const e = explainRequestError(error);
      this._current.noteOnTurn(turn, `Could not stop the turn: ${e.title}.`);
    }
  }

  /** Answer a tool's approval request. */
  async respond(tool: IToolItem, decision: 'allow' | 'deny' | 'always',
    model: ConversationModel = this._current): Promise<void> {
    const approval = tool.approval;
    if (!approval || tool.state !== 'awaiting_approval') {
      return;
    }
    model.markDecision(approval.id, decision);
    const payload: Record<string, unknown> = { approval_id: approval.id, decision };
    if (approval.argumentsHash) {
      payload.arguments_hash = approval.argumentsHash;
    }
    try {
      await this._channel.request('approval.respond', payload);
    } catch (error) {
      model.decisionFailed(approval.id, error);
    }
  }

  /** Put back every file and cell a finished turn changed. */
  async undo(turn: ITurn, model: ConversationModel = this._current): Promise<void> {
    if (!model.canUndo(turn) || !model.id || !turn.id) {
      return;
    }
    model.setUndoing(turn, true);
    try {
      const result = await this._channel.request<{ restored?: unknown[] }>('chat.undo', {
        conversation_id: model.id, turn_id: turn.id
      });
      model.markUndone(turn, Array.isArray(result?.restored) ? result.restored.length : 0);
    } catch (error) {
      model.setUndoing(turn, false);
      const e = explainRequestError(error);
      model.noteOnTurn(turn, `Undo failed: ${e.title}. ${e.detail}`);
    }
  }

  // -- frames -------------------------------------------------------------------------------

  private _onFrame(_: unknown, frame: IFrame): void {
    const p = frame.payload;
    if (typeof p !== 'object' || p === null) {
      return;
    }
    if (frame.type === 'event' && p.kind === 'turn.started') {
      this._onStarted(frame, p);
      return;
    }
    const turnId = typeof p.turn_id === 'string' ? p.turn_id : null;
    if (!turnId) {
      return; // not a chat frame (index progress, execute output, ...)
    }
    let model = this._turns.get(turnId);
    if (!model && frame.type === 'stream' && typeof p.conversation_id === 'string') {
      model = this._modelFor(p.conversation_id); // its turn.started was lost
    }
    if (!model) {
      return;
    }
    model.applyFrame(frame);
    const turn = model.turnById(turnId);
    if (turn) {
      this._turns.set(turnId, model);
    }
    if (p.kind === 'turn.error') {
      this._inflight.remove(turnId);
    }
  }

  private _onStarted(frame: IFrame, p: any): void {
    const conversationId = typeof p.conversation_id === 'string' ? p.conversation_id : null;
    const turnId = typeof p.turn_id === 'string' ? p.turn_id : null;
    if (!conversationId || !turnId) {
      return;
    }
    let model = this._models_.get(conversationId);
    if (!model && this._draft.owns(frame)) {
      model = this._draft;
    }
    model = model ?? this._modelFor(conversationId);
    if (!model.applyFrame(frame)) {
      return;
    }
    if (!this._models_.has(conversationId)) {
      this._models_.set(conversationId, model); // the draft got its id
      void this.refreshConversations();
    }
    this._turns.set(turnId, model);
    if (model === this._current) {
      this._inflight.setCurrent(model.id);
    }
    const turn = model.turnById(turnId);
    if (turn && typeof frame.seq === 'number') {
      this._inflight.add({
        turnId, conversationId, seq: frame.seq, sessionId: this._channel.sessionId,
        text: turn.user?.text ?? '', context: turn.user?.context ?? [], task: turn.user?.task ?? null
      });
    }
    if (turn && this._cancelWanted.has(turn)) {
      this._cancelWanted.delete(turn);
      void this._channel.request('chat.cancel', { turn_id: turnId }).catch(() => undefined);
    }
    this._emitChanged();
  }

  /** The end of a turn this page did not send (sent before a reload). */
  private _onResponse(_: unknown, frame: IFrame): void {
    const p = frame.payload;
    if (!p || typeof p.turn_id !== 'string' || typeof p.status !== 'string') {
      return;
    }
    const model = this._turns.get(p.turn_id) ??
      (typeof p.conversation_id === 'string' ? this._models_.get(p.conversation_id) : undefined);
    if (model) {
      this._finish(model, p as ITurnResult);
      void this.refreshConversations();
    } else {
      this._inflight.remove(p.turn_id);
    }
  }

  private _finish(model: ConversationModel, result: ITurnResult): void {
    model.finishTurn(result);
    if (result.turn_id) {
      this._inflight.remove(result.turn_id);
    }
  }

  /** The server lost our session: running turns' frames are gone; refetch what was stored. */
  private _onSessionReset(): void {
    this._inflight.clear();
    const lost = new CloudIDEError('the server no longer had this session', {
      status: 0, code: 'connection_lost' });
    for (const model of this._models_.values()) {
      const turn = model.activeTurn;
      if (turn?.id) {
        model.failTurn(turn, lost); // its frames went to the old session: shown as incomplete
      }
    }
    this._refetchActive();
  }

  private _onGap(): void {
    this._refetchActive();
  }

  private _refetchActive(): void {
    for (const model of this._models_.values()) {
      if (model === this._current || model.activeTurn || model.turns.some(
        t => t.status === 'incomplete' && t.live)) {
        void this.reload(model);
      }
    }
  }

  /** Forget reload records of turns the stored messages show as ended. */
  private _forgetEnded(model: ConversationModel): void {
    for (const record of this._inflight.list()) {
      const turn = record.conversationId === model.id ? model.turnById(record.turnId) : null;
      if (turn && isEnded(turn.status) && turn.status !== 'incomplete') {
        this._inflight.remove(record.turnId);
      }
    }
  }

  // -- helpers ------------------------------------------------------------------------------

  private _modelFor(id: string): ConversationModel {
    let model = this._models_.get(id);
    if (!model) {
      model = new ConversationModel(id, this._conversations.find(c => c.id === id)?.title ?? '');
      this._models_.set(id, model);
    }
    return model;
  }

  private _newDraft(): ConversationModel {
    return new ConversationModel(null, 'New conversation');
  }

  private _setCurrent(model: ConversationModel): void {
    if (model !== this._current) {
      this._current = model;
      this._inflight.setCurrent(model.id);
      this._currentChanged.emit(model);
    }
  }

  private _emitChanged(): void {
    this._changed.emit();
  }

  private _channel: IChatChannel;
  private _api: IChatApi;
  private _inflight: InflightStore;
  private _started = false;
  private _current: ConversationModel;
  private _draft: ConversationModel;
  private _models_ = new Map<string, ConversationModel>();
  /** turn id → the conversation it runs in */
  private _turns = new Map<string, ConversationModel>();
  private _cancelWanted = new Set<ITurn>();
  private _conversations: IConversationInfo[] = [];
  private _conversationsError: IExplanation | null = null;
  private _models: IModelList | null = null;
  private _modelsError: IExplanation | null = null;
  private _loadErrors = new Map<string, IExplanation>();
  private _changed = new Signal<this, void>(this);
  private _currentChanged = new Signal<this, ConversationModel>(this);
}
