import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { installMiniDom, MiniElement } from './minidom';

// The Markdown view needs JupyterLab's renderer (a browser); a text stand-in here.
vi.mock('../chat/markdown', () => ({
  MarkdownView: class {
    node = document.createElement('div');
    update(text: string) {
      this.node.textContent = text;
    }
    dispose() {
      /* nothing */
    }
  }
}));

import { renderDiff, renderError, ToolCardView } from '../chat/cards';
import { ConversationModel } from '../chat/model';
import { TurnView } from '../chat/turnview';
import type { IToolItem } from '../chat/types';

const XSS = '<img src=x onerror=alert(1)>';
const CONV = '0b7c2a3e-1111-4222-8333-944455556666';
const T1 = 'a'.repeat(32);

let uninstall: () => void;
beforeEach(() => {
  uninstall = installMiniDom();
});
afterEach(() => uninstall());

function el(node: unknown): MiniElement {
  return node as MiniElement;
}

function card(overrides: Partial<IToolItem> = {}): IToolItem {
  return { type: 'tool', key: 'k', rev: 1, toolCallId: 'c1', name: 'write_file',
    arguments: { path: XSS, content: '<script>alert(1)</script>' }, argumentsText: null,
    state: 'awaiting_approval', approval: { id: 'ap', argumentsHash: 'h', reason: XSS,
      risks: ['<b>os.system</b>'] }, decision: null, approvalError: null, result: null, ok: null,
    diff: null, diffOmitted: false, path: XSS, edits: false, ...overrides };
}

describe('chat views render model text as text', () => {
  it('a tool card with hostile name, path, arguments, reason and risks', () => {
    const decisions: string[] = [];
    const view = new ToolCardView((_, d) => decisions.push(d));
    view.update(card({ name: XSS }));
    const node = el(view.node);
    expect(node.all().some(e => ['IMG', 'SCRIPT', 'B'].includes(e.tagName))).toBe(false);
    expect(node.textContent).toContain(XSS);
    expect(node.textContent).toContain('<script>alert(1)</script>');
    expect(node.textContent).toContain('<b>os.system</b>');
    expect(node.attrs.get('data-state')).toBe('awaiting_approval');
    const [approve] = node.byTestId('approval-approve');
    expect(node.byTestId('approval-deny').length).toBe(1);
    expect(node.byTestId('approval-always').length).toBe(1);
    approve.click();
    approve.click(); // disabled after the first click
    expect(decisions).toEqual(['allow']);
  });

  it('a result and a diff are text lines classed by kind', () => {
    const view = new ToolCardView(() => undefined);
    const diff = `--- a/${XSS}\n+++ b/${XSS}\n@@ -1 +1 @@\n-<script>old()</script>\n+${XSS}\n`;
    view.update(card({ state: 'done', approval: null, result: XSS, ok: true, diff }));
    const node = el(view.node);
    expect(node.byTestId('approval-approve')).toEqual([]);
    const [diffView] = node.byTestId('diff-view');
    const lines = diffView.querySelectorAll('.jp-cloudide-diff-line');
    expect(lines.map(l => l.attrs.get('data-kind'))).toEqual(['file', 'file', 'hunk', 'del', 'add']);
    expect(lines[4].className).toContain('jp-cloudide-diff-add');
    expect(lines[4].textContent).toContain(`+${XSS}`);
    expect(node.byTestId('tool-result')[0].textContent).toBe(XSS);
    expect(node.all().some(e => e.tagName === 'IMG' || e.tagName === 'SCRIPT')).toBe(false);
  });

  it('code arguments show as code; long results are cut with "Show all"', () => {
    const view = new ToolCardView(() => undefined);
    const long = 'x'.repeat(5000);
    view.update(card({ name: 'execute_code', arguments: { code: 'print(1)' }, state: 'done',
      approval: null, result: long, ok: true }));
    const node = el(view.node);
    expect(node.byTestId('tool-arguments')[0].textContent).toBe('print(1)');
    const result = node.byTestId('tool-result')[0];
    expect(result.textContent.length).toBeLessThan(5000);
    node.byTestId('tool-result-more')[0].click();
    expect(result.textContent).toBe(long);
  });

  it('errors and diffs standalone', () => {
    const error = el(renderError({ type: 'error', key: 'e', rev: 0, status: 'error', message: XSS,
      explanation: { kind: 'model_error', title: 'The model failed', action: 'Try again.',
        detail: XSS, retryAfter: null } }));
    expect(error.attrs.get('data-testid')).toBe('chat-error');
    expect(error.textContent).toContain(XSS);
    const empty = el(renderDiff(''));
    expect(empty.attrs.get('data-testid')).toBe('diff-view');
    expect(empty.querySelectorAll('.jp-cloudide-diff-line')).toEqual([]);
  });
});

describe('TurnView', () => {
  it('renders a turn from the model and updates it in place', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn(XSS, [{ kind: 'cell', path: 'nb.ipynb', cell_id: 'c' }], 'fix', 1);
    const undone: string[] = [];
    const decided: string[] = [];
    const view = new TurnView({
      rendermime: null as any, actions: null,
      decide: (_, d) => decided.push(d),
      undo: t => undone.push(t.id ?? ''),
      canUndo: t => model.canUndo(t)
    });
    const frame = (seq: number, payload: any) =>
      model.applyFrame({ type: 'event', id: 1, seq, payload: { turn_id: T1, ...payload } });
    frame(1, { kind: 'turn.started', conversation_id: CONV });
    model.applyFrame({ type: 'stream', seq: 2, payload: { conversation_id: CONV, turn_id: T1,
      delta: '**hi**' } });
    frame(3, { kind: 'approval.request', approval_id: 'ap', tool_call_id: 'c1', name: 'edit_cell',
      arguments: { path: 'nb.ipynb' }, arguments_hash: 'h', reason: 'writes ask', risks: [] });
    view.update(turn);
    const node = el(view.node);
    expect(node.byTestId('user-message')[0].textContent).toContain(XSS);
    expect(node.byTestId('assistant-message')[0].textContent).toBe('**hi**');
    expect(node.byTestId('turn-progress')[0].textContent).toContain('approval');
    const assistant = node.byTestId('assistant-message')[0];
    node.byTestId('approval-approve')[0].click();
    expect(decided).toEqual(['allow']);

    frame(4, { kind: 'tool.result', tool_call_id: 'c1', name: 'edit_cell', ok: true,
      content: 'Edited', data: { path: 'nb.ipynb', diff: '@@ -1 +1 @@\n-a\n+b\n' } });
    frame(5, { kind: 'turn.usage', model: 'm', input_tokens: 10, output_tokens: 2, cost: 0.001 });
    model.finishTurn({ conversation_id: CONV, turn_id: T1, status: 'ok' });
    view.update(turn);
    expect(node.byTestId('assistant-message')[0]).toBe(assistant); // kept, not rebuilt
    expect(node.byTestId('tool-card')[0].attrs.get('data-state')).toBe('done');
    expect(node.byTestId('diff-view').length).toBe(1);
    expect(node.byTestId('usage-line')[0].textContent).toBe('10 in · 2 out · $0.0010 · m');
    expect(node.byTestId('turn-progress')).toEqual([]);
    node.byTestId('undo-turn')[0].click();
    expect(undone).toEqual([T1]);
    expect(node.attrs.get('data-status')).toBe('ok');
  });

  it('a streamed delta re-renders the message, not the footer (the spinner keeps turning)', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('hi', [], null, 1);
    const view = new TurnView({ rendermime: null as any, actions: null, decide: () => undefined,
      undo: () => undefined, canUndo: t => model.canUndo(t) });
    model.applyFrame({ type: 'event', id: 1, seq: 1, payload: { turn_id: T1,
      kind: 'turn.started', conversation_id: CONV } });
    const delta = (seq: number, text: string) => model.applyFrame({ type: 'stream', seq,
      payload: { conversation_id: CONV, turn_id: T1, delta: text } });
    delta(2, 'Hel');
    view.update(turn);
    const node = el(view.node);
    const spinner = node.byTestId('turn-progress')[0];
    delta(3, 'lo');
    view.update(turn);
    expect(node.byTestId('assistant-message')[0].textContent).toBe('Hello');
    expect(node.byTestId('turn-progress')[0]).toBe(spinner);
    model.finishTurn({ conversation_id: CONV, turn_id: T1, status: 'ok' });
    view.update(turn);
    expect(node.byTestId('turn-progress')).toEqual([]);
  });
});
