/**
 * The chat side panel: conversation list, messages, model and task pickers, context chips,
 * the input with Send / Stop, and a setup view when the server offers no model.
 *
 * Everything shown is built from text nodes (`dom.ts`); assistant Markdown alone goes
 * through the sanitising renderer (`markdown.ts`).
 */

import { Dialog, InputDialog, showDialog } from '@jupyterlab/apputils';
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Widget } from '@lumino/widgets';

import type { ChatController } from './controller';
import { button, h, replaceChildren } from './dom';
import { SETUP_HELP } from './explain';
import { modelLabel, modelTitle } from './format';
import type { ConversationModel } from './model';
import { TurnView } from './turnview';
import { TASKS, TaskName } from './types';
import type { Workspace } from './workspace';

export interface IChatPanelOptions {
  controller: ChatController;
  /** The chat's own registry (`createChatRendermime`). */
  rendermime: IRenderMimeRegistry;
  workspace: Workspace | null;
}

export class ChatPanel extends Widget {
  constructor(options: IChatPanelOptions) {
    super();
    this._controller = options.controller;
    this._rendermime = options.rendermime;
    this._workspace = options.workspace;
    this.id = 'jp-cloudide-chat';
    this.addClass('jp-cloudide-chat');
    this.node.dataset.testid = 'chat-panel';
    this.title.caption = 'AI chat';

    this._title = h('span', { class: 'jp-cloudide-chat-title', testid: 'chat-title' });
    const listToggle = button('☰', 'conversation-toggle', () => this._toggleList(), {
      title: 'Conversations' });
    const header = h('div', { class: 'jp-cloudide-chat-header' },
      listToggle, this._title,
      button('New', 'chat-new', () => this._controller.newConversation(), {
        title: 'Start a new conversation' }));
    this._list = h('div', { class: 'jp-cloudide-chat-conversations', testid: 'conversation-list' });
    this._list.hidden = true;
    this._banner = h('div', { class: 'jp-cloudide-chat-banner', testid: 'chat-connection' });
    this._setup = h('div', { class: 'jp-cloudide-chat-setup', testid: 'chat-setup' });
    this._messages = h('div', { class: 'jp-cloudide-chat-messages', testid: 'message-list',
      attrs: { 'aria-live': 'polite' } });

    this._modelPicker = h('select', { class: 'jp-cloudide-chat-select', testid: 'model-picker',
      title: 'Model' });
    this._modelPicker.addEventListener('change', () => {
      this._controller.selectedModel = this._modelPicker.value;
    });
    this._taskPicker = h('select', { class: 'jp-cloudide-chat-select', testid: 'task-picker',
      title: 'Task' });
    for (const task of TASKS) {
      const option = h('option', { title: task.caption }, task.label);
      option.value = task.name;
      this._taskPicker.appendChild(option);
    }
    this._taskPicker.value = this._controller.task;
    this._taskPicker.addEventListener('change', () => {
      this._controller.task = this._taskPicker.value as TaskName;
    });
    this._chips = h('div', { class: 'jp-cloudide-chat-chips', testid: 'context-chips' });
    this._input = h('textarea', { class: 'jp-cloudide-chat-input', testid: 'chat-input',
      attrs: { rows: '3', placeholder: 'Ask about your code… (Enter sends, Shift+Enter: new line)' } });
    this._input.addEventListener('keydown', ev => this._onKey(ev));
    this._input.addEventListener('focus', () => this._renderChips());
    this._send = button('Send', 'chat-send', () => void this._doSend(), {
      class: 'jp-mod-accept', title: 'Send (Enter)' });
    this._stop = button('Stop', 'chat-stop', () => void this._controller.cancel(), {
      class: 'jp-mod-reject', title: 'Stop the running turn' });
    const composer = h('div', { class: 'jp-cloudide-chat-composer' },
      this._chips,
      h('div', { class: 'jp-cloudide-chat-pickers' }, this._modelPicker, this._taskPicker),
      this._input,
      h('div', { class: 'jp-cloudide-chat-actions' }, this._send, this._stop));
    this.node.append(header, this._list, this._banner, this._setup, this._messages, composer);
    // Follow the end of the conversation unless the user scrolled away from it. Turns grow
    // after the render that added them (Markdown is rendered asynchronously, block by block):
    // a ResizeObserver on the turns scrolls after layout, before paint, in the same frame.
    this._messages.addEventListener('scroll', () => {
      const box = this._messages;
      if (Math.abs(box.scrollTop - this._autoTop) < 1) {
        return; // our own scroll (the content may have grown since: still following)
      }
      this._follow = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    });
    this._resize = typeof ResizeObserver === 'undefined' ? null
      : new ResizeObserver(() => this._followEnd());

    this._controller.changed.connect(this._onControllerChanged, this);
    this._controller.currentChanged.connect(this._onCurrentChanged, this);
    this._workspace?.changed.connect(this._scheduleChips, this);
    this._watch(this._controller.current);
    this._onControllerChanged();
    this._renderChips();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    for (const view of this._views.values()) {
      view.dispose();
    }
    this._views.clear();
    this._resize?.disconnect();
    if (this._frame !== null) {
      cancelAnimationFrame(this._frame);
    }
    super.dispose();
  }

  // -- controller and model ----------------------------------------------------------------

  private _watch(model: ConversationModel): void {
    this._model?.changed.disconnect(this._scheduleRender, this);
    this._model = model;
    model.changed.connect(this._scheduleRender, this);
    for (const view of this._views.values()) {
      this._resize?.unobserve(view.node);
      view.dispose();
    }
    this._views.clear();
    this._stick = true;
    this._render();
  }

  private _onCurrentChanged(_: unknown, model: ConversationModel): void {
    this._watch(model);
    this._onControllerChanged();
  }

  private _onControllerChanged(): void {
    this._renderHeader();
    this._renderList();
    this._renderBanner();
    this._renderModels();
    this._renderControls();
    this._scheduleRender(); // the setup view follows the model list
  }

  private _scheduleRender(): void {
    if (this._frame === null) {
      this._frame = requestAnimationFrame(() => {
        this._frame = null;
        this._render();
      });
    }
  }

  private _render(): void {
    const model = this._model;
    if (!model || this.isDisposed) {
      return;
    }
    const box = this._messages;
    const seen = new Set<string>();
    let before: ChildNode | null = box.firstChild;
    for (const turn of model.turns) {
      seen.add(turn.key);
      let view = this._views.get(turn.key);
      if (!view) {
        view = new TurnView({
          rendermime: this._rendermime,
          actions: this._workspace,
          decide: (tool, decision) => void this._controller.respond(tool, decision, model),
          undo: t => void this._controller.undo(t, model),
          canUndo: t => model.canUndo(t)
        });
        this._views.set(turn.key, view);
        this._resize?.observe(view.node);
      }
      view.update(turn);
      if (view.node !== before) {
        box.insertBefore(view.node, before);
      } else {
        before = before.nextSibling;
      }
    }
    for (const [key, view] of [...this._views]) {
      if (!seen.has(key)) {
        this._resize?.unobserve(view.node);
        view.dispose();
        this._views.delete(key);
      }
    }
    const error = this._controller.loadError(model);
    this._setupOrEmpty(model, error ? `${error.title}. ${error.action}` : null);
    this._renderHeader();
    this._renderControls();
    if (this._stick) {
      this._follow = true;
      this._stick = false;
      this._scrollToEnd();
    } else if (this._follow && !this._resize) {
      this._scrollToEnd();
    }
  }

  private _scrollToEnd(): void {
    const box = this._messages;
    box.scrollTop = box.scrollHeight;
    this._autoTop = box.scrollTop;
  }

  /** The turns changed size (after layout): keep the end in view when following it. */
  private _followEnd(): void {
    if (this._follow && !this.isDisposed) {
      this._scrollToEnd();
    }
  }

  // -- parts ------------------------------------------------------------------------------

  private _renderHeader(): void {
    const model = this._controller.current;
    const info = this._controller.conversations.find(c => c.id === model.id);
    this._title.textContent = info?.title || model.title || 'New conversation';
  }

  private _renderList(): void {
    const current = this._controller.current.id;
    const items = this._controller.conversations.map(c => {
      const open = h('button', {
        class: 'jp-cloudide-chat-conversation-open', testid: 'conversation-open', type: 'button',
        title: `${c.title}\n${c.updated_at}`,
        onClick: () => {
          this._list.hidden = true;
          void this._controller.open(c.id);
        }
      }, c.title || 'Untitled');
      return h('div', {
        class: `jp-cloudide-chat-conversation${c.id === current ? ' jp-mod-current' : ''}`,
        testid: 'conversation-item', attrs: { 'data-conversation-id': c.id }
      }, open,
      button('Rename', 'conversation-rename', () => void this._rename(c.id, c.title)),
      button('Delete', 'conversation-delete', () => void this._delete(c.id, c.title)));
    });
    const error = this._controller.conversationsError;
    replaceChildren(this._list,
      error ? h('div', { class: 'jp-cloudide-chat-note' }, `${error.title}. ${error.action}`) : null,
      items.length ? null : h('div', { class: 'jp-cloudide-chat-note' }, 'No conversations yet.'),
      ...items);
  }

  private _renderBanner(): void {
    const state = this._controller.connection;
    const text = state === 'reconnecting' ? 'Reconnecting to the server…'
      : state === 'closed' ? 'Not connected to the server.' : '';
    this._banner.textContent = text;
    this._banner.hidden = !text;
    this._banner.dataset.state = state;
  }

  private _renderModels(): void {
    const list = this._controller.models;
    const picker = this._modelPicker;
    if (list === this._modelsShown && picker.options.length) {
      return;
    }
    this._modelsShown = list;
    const options: HTMLOptionElement[] = [];
    const auto = h('option', {}, list?.default ? `Auto (default: ${list.default})` : 'Auto');
    auto.value = '';
    options.push(auto);
    for (const model of list?.models ?? []) {
      const option = h('option', { title: modelTitle(model) }, modelLabel(model));
      option.value = model.id;
      options.push(option);
    }
    replaceChildren(picker, ...options);
    picker.value = this._controller.selectedModel;
    picker.disabled = !list || list.models.length === 0;
  }

  /** The setup view (no model), the load error, or a hint for an empty conversation. */
  private _setupOrEmpty(model: ConversationModel, loadError: string | null): void {
    const list = this._controller.models;
    const modelsError = this._controller.modelsError;
    const parts: (Node | string)[] = [];
    if (list && list.models.length === 0) {
      parts.push(h('h3', {}, 'No AI model is configured'),
        h('p', {}, 'This server has no model you may use yet. ' + SETUP_HELP),
        h('pre', {}, 'export OPENAI_API_KEY=…\nexport OPENAI_BASE_URL=http://localhost:11434/v1  # optional\n' +
          'jupyter lab'),
        button('Check again', 'chat-setup-retry', () => void this._controller.refreshModels()));
    } else if (modelsError) {
      parts.push(h('p', {}, `${modelsError.title}. ${modelsError.action}`),
        button('Check again', 'chat-setup-retry', () => void this._controller.refreshModels()));
    }
    if (loadError) {
      parts.push(h('p', {}, loadError));
    }
    if (!parts.length && model.turns.length === 0) {
      parts.push(h('p', { class: 'jp-cloudide-chat-note' },
        'Ask a question, or attach the active notebook, cell or selection and ask for a change. ' +
        'Edits and code runs ask for your approval first.'));
    }
    replaceChildren(this._setup, ...parts);
    this._setup.hidden = parts.length === 0;
  }

  private _renderControls(): void {
    const running = !!this._controller.current.activeTurn;
    const noModels = !!this._controller.models && this._controller.models.models.length === 0;
    this._send.hidden = running;
    this._stop.hidden = !running;
    this._send.disabled = noModels;
    this.node.dataset.running = String(running);
  }

  private _scheduleChips(): void {
    if (this._chipsFrame === null) {
      this._chipsFrame = requestAnimationFrame(() => {
        this._chipsFrame = null;
        this._renderChips();
      });
    }
  }

  private _renderChips(): void {
    const chips = this._workspace?.chips() ?? [];
    replaceChildren(this._chips, ...chips.map(chip => h('span', {
      class: `jp-cloudide-chat-chip jp-mod-${chip.item.kind}`, testid: 'context-chip',
      title: chip.item.path ?? '', attrs: { 'data-kind': chip.item.kind }
    }, h('span', { class: 'jp-cloudide-chat-chip-label' }, chip.label),
    button('×', 'chip-remove', () => this._workspace?.removeChip(chip.key), {
      title: 'Do not attach this' }))));
    this._chips.hidden = chips.length === 0;
  }

  // -- actions ----------------------------------------------------------------------------

  private _onKey(ev: KeyboardEvent): void {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      if (!this._controller.current.activeTurn) {
        void this._doSend();
      }
    }
  }

  private async _doSend(): Promise<void> {
    const text = this._input.value;
    if (!text.trim() || this._controller.current.activeTurn) {
      return;
    }
    const context = (this._workspace?.chips() ?? []).map(c => c.item);
    this._input.value = '';
    this._stick = true;
    const model = this._controller.current;
    await this._controller.send(text, context);
    // refused before it started (rate limit, ...): give the text back to edit or resend
    const last = model.turns[model.turns.length - 1];
    if (last && !last.id && last.status === 'error' && !this._input.value) {
      this._input.value = text;
    }
  }

  private _toggleList(): void {
    this._list.hidden = !this._list.hidden;
    if (!this._list.hidden) {
      void this._controller.refreshConversations();
    }
  }

  private async _rename(id: string, title: string): Promise<void> {
    const result = await InputDialog.getText({ title: 'Rename conversation', text: title });
    const value = result.value?.trim();
    if (!result.button.accept || !value) {
      return;
    }
    try {
      await this._controller.rename(id, value.slice(0, 500));
    } catch (error) {
      void showDialog({ title: 'Rename failed', body: String((error as Error).message ?? error),
        buttons: [Dialog.okButton()] });
    }
  }

  private async _delete(id: string, title: string): Promise<void> {
    const answer = await showDialog({
      title: 'Delete conversation?',
      body: `"${title}" and its messages will be deleted.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this._controller.remove(id);
    } catch (error) {
      void showDialog({ title: 'Delete failed', body: String((error as Error).message ?? error),
        buttons: [Dialog.okButton()] });
    }
  }

  private _controller: ChatController;
  private _rendermime: IRenderMimeRegistry;
  private _workspace: Workspace | null;
  private _model: ConversationModel | null = null;
  private _views = new Map<string, TurnView>();
  private _frame: number | null = null;
  private _chipsFrame: number | null = null;
  private _stick = true;
  /** The view is at (or was scrolled back to) the end of the conversation. */
  private _follow = true;
  /** Where the last programmatic scroll left the view. */
  private _autoTop = -1;
  private _resize: ResizeObserver | null;
  private _modelsShown: unknown = undefined;
  private _title: HTMLElement;
  private _list: HTMLElement;
  private _banner: HTMLElement;
  private _setup: HTMLElement;
  private _messages: HTMLElement;
  private _modelPicker: HTMLSelectElement;
  private _taskPicker: HTMLSelectElement;
  private _chips: HTMLElement;
  private _input: HTMLTextAreaElement;
  private _send: HTMLButtonElement;
  private _stop: HTMLButtonElement;
}
