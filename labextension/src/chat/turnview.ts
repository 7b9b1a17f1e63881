/**
 * The view of one turn: the user's message with its attachments, the assistant's text,
 * tool cards, notices and errors in order, then a footer with the status, the token and
 * cost line, the model and why it was chosen, and Undo. Item views are kept by key and
 * updated in place, so streaming text re-renders only its own message.
 */

import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { Decision, renderError, renderNotice, ToolCardView } from './cards';
import { button, h, replaceChildren } from './dom';
import { chipLabel, usageLine } from './format';
import { ICodeActions, MarkdownView } from './markdown';
import type { IToolItem, ITurn, TurnItem } from './types';

export interface ITurnViewContext {
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions | null;
  decide(tool: IToolItem, decision: Decision): void;
  undo(turn: ITurn): void;
  canUndo(turn: ITurn): boolean;
}

interface IItemView {
  rev: number;
  node: HTMLElement;
  update(item: TurnItem): void;
  dispose(): void;
}

export class TurnView {
  constructor(ctx: ITurnViewContext) {
    this._ctx = ctx;
    this.node = h('div', { class: 'jp-cloudide-chat-turn', testid: 'chat-turn' });
    this._user = h('div', { class: 'jp-cloudide-chat-user', testid: 'user-message' });
    this._items = h('div', { class: 'jp-cloudide-chat-items' });
    this._footer = h('div', { class: 'jp-cloudide-chat-turn-footer' });
    this.node.append(this._user, this._items, this._footer);
  }

  readonly node: HTMLElement;

  update(turn: ITurn): void {
    if (turn === this._turn && turn.rev === this._rev) {
      return;
    }
    if (turn !== this._turn) {
      this._footerKey = null; // its buttons act on the turn object
    }
    this._turn = turn;
    this._rev = turn.rev;
    this.node.dataset.status = turn.status;
    if (turn.id) {
      this.node.dataset.turnId = turn.id;
    }
    this._renderUser(turn);
    this._renderItems(turn);
    this._renderFooter(turn);
  }

  dispose(): void {
    for (const view of this._views.values()) {
      view.dispose();
    }
    this._views.clear();
    this.node.remove();
  }

  private _renderUser(turn: ITurn): void {
    const user = turn.user;
    const key = user ? `${user.text}\u0000${user.context.length}\u0000${user.task}` : '';
    if (key === this._userKey) {
      return;
    }
    this._userKey = key;
    if (!user) {
      replaceChildren(this._user);
      this._user.hidden = true;
      return;
    }
    this._user.hidden = false;
    const chips = user.context.length
      ? h('div', { class: 'jp-cloudide-chat-user-context' },
        ...user.context.map(item => h('span', { class: 'jp-cloudide-chat-chip jp-mod-sent',
          title: item.path ?? '' }, chipLabel(item))))
      : null;
    replaceChildren(this._user,
      user.task && user.task !== 'agent'
        ? h('span', { class: 'jp-cloudide-chat-task-badge' }, user.task) : null,
      h('div', { class: 'jp-cloudide-chat-user-text' }, user.text),
      chips);
  }

  private _renderItems(turn: ITurn): void {
    const seen = new Set<string>();
    let before: ChildNode | null = this._items.firstChild;
    for (const item of turn.items) {
      seen.add(item.key);
      let view = this._views.get(item.key);
      if (!view) {
        view = this._createView(item);
        this._views.set(item.key, view);
        view.update(item);
        view.rev = item.rev;
      } else if (view.rev !== item.rev) {
        view.update(item);
        view.rev = item.rev;
      }
      if (view.node !== before) {
        this._items.insertBefore(view.node, before);
      } else {
        before = before.nextSibling;
      }
    }
    for (const [key, view] of [...this._views]) {
      if (!seen.has(key)) {
        view.dispose();
        this._views.delete(key);
      }
    }
  }

  private _createView(item: TurnItem): IItemView {
    const ctx = this._ctx;
    switch (item.type) {
      case 'assistant': {
        const md = new MarkdownView(ctx.rendermime, ctx.actions);
        const node = h('div', { class: 'jp-cloudide-chat-assistant', testid: 'assistant-message' },
          md.node);
        return { rev: -1, node,
          update: i => md.update(i.type === 'assistant' ? i.text : ''),
          dispose: () => { md.dispose(); node.remove(); } };
      }
      case 'tool': {
        const card = new ToolCardView((tool, decision) => ctx.decide(tool, decision));
        return { rev: -1, node: card.node,
          update: i => i.type === 'tool' && card.update(i),
          dispose: () => card.dispose() };
      }
      default: {
        const holder = h('div', { class: 'jp-cloudide-chat-item' });
        return { rev: -1, node: holder,
          update: i => replaceChildren(holder,
            i.type === 'error' ? renderError(i) : i.type === 'notice' ? renderNotice(i) : null),
          dispose: () => holder.remove() };
      }
    }
  }

  private _renderFooter(turn: ITurn): void {
    const waiting = turn.items.some(i => i.type === 'tool' && i.state === 'awaiting_approval');
    const canUndo = this._ctx.canUndo(turn);
    // a streamed delta changes the turn but not its footer: rebuilding it every frame would
    // restart the spinner's animation (it would never turn) and cost a layout
    const key = footerKey(turn, waiting, canUndo);
    if (key === this._footerKey) {
      return;
    }
    this._footerKey = key;
    const parts: (Node | null)[] = [];
    if (turn.status === 'pending' || turn.status === 'running') {
      parts.push(h('div', { class: 'jp-cloudide-chat-progress', testid: 'turn-progress' },
        h('span', { class: 'jp-cloudide-chat-spinner' }),
        waiting ? 'Waiting for your approval' : turn.status === 'pending' ? 'Sending…' : 'Working…'));
    }
    if (turn.usage) {
      parts.push(h('div', { class: 'jp-cloudide-chat-usage', testid: 'usage-line' },
        usageLine(turn.usage)));
    }
    if (turn.model) {
      parts.push(h('div', { class: 'jp-cloudide-chat-model', testid: 'turn-model' },
        `Model: ${turn.model}${turn.modelReason ? ` — ${turn.modelReason}` : ''}`));
    }
    const prompt = turn.prompt;
    if (prompt && prompt.context.length) {
      parts.push(h('div', { class: 'jp-cloudide-chat-context-report', testid: 'context-report' },
        'Context: ' + prompt.context.map(c => `${c.title} (${c.status})`).join(', ')));
    }
    if (canUndo || turn.undoing) {
      parts.push(button(turn.undoing ? 'Undoing…' : 'Undo changes', 'undo-turn',
        () => this._ctx.undo(turn), {
          title: 'Put back every file and cell this turn changed',
          disabled: turn.undoing }));
    }
    replaceChildren(this._footer, ...parts);
  }

  private _ctx: ITurnViewContext;
  private _turn: ITurn | null = null;
  private _rev = -1;
  private _userKey: string | null = null;
  private _footerKey: string | null = null;
  private _user: HTMLElement;
  private _items: HTMLElement;
  private _footer: HTMLElement;
  private _views = new Map<string, IItemView>();
}

/** What the footer shows, as a string: equal keys, equal footers. */
export function footerKey(turn: ITurn, waiting: boolean, canUndo: boolean): string {
  return JSON.stringify([turn.status, waiting, turn.usage, turn.model, turn.modelReason,
    turn.prompt?.context ?? null, canUndo, turn.undoing]);
}
