/**
 * Views of the non-text items of a turn: tool-call cards (arguments, approval buttons,
 * result, diff), notices and explained errors. Text nodes only: tool arguments, results,
 * file names and diffs come from the model or the workspace and are never HTML.
 */

import { parseUnifiedDiff } from './diff';
import { button, h, replaceChildren } from './dom';
import type { IErrorItem, INoticeItem, IToolItem, ToolState } from './types';

/** Longest result text shown before "Show all". */
const RESULT_PREVIEW = 4000;

const STATE_LABELS: Record<ToolState, string> = {
  running: 'running',
  awaiting_approval: 'waiting for your approval',
  approved: 'approved',
  denied: 'denied',
  done: 'done',
  failed: 'failed'
};

export type Decision = 'allow' | 'deny' | 'always';

/** A unified diff as text lines classed by kind (add/del/context/hunk/file/meta). */
export function renderDiff(diff: string): HTMLElement {
  const parsed = parseUnifiedDiff(diff);
  const node = h('div', { class: 'jp-cloudide-diff', testid: 'diff-view',
    attrs: { role: 'table', 'aria-label': 'Changes' } });
  node.appendChild(h('div', { class: 'jp-cloudide-diff-stats' },
    `+${parsed.added} −${parsed.removed}`));
  const body = h('div', { class: 'jp-cloudide-diff-body' });
  for (const line of parsed.lines) {
    const num = line.kind === 'add' ? line.newLine : line.oldLine;
    body.appendChild(h('div', {
      class: `jp-cloudide-diff-line jp-cloudide-diff-${line.kind}`,
      attrs: { 'data-kind': line.kind }
    },
    h('span', { class: 'jp-cloudide-diff-num' }, num !== undefined ? String(num) : ''),
    h('span', { class: 'jp-cloudide-diff-text' }, line.text)));
  }
  node.appendChild(body);
  return node;
}

function argumentsText(tool: IToolItem): string | null {
  if (tool.arguments !== null && tool.arguments !== undefined) {
    try {
      return JSON.stringify(tool.arguments, null, 2);
    } catch {
      /* fall through */
    }
  }
  return tool.argumentsText;
}

/** The code of an `execute_code`/`run_cell`-like call, shown as code, not JSON. */
function codeArgument(tool: IToolItem): string | null {
  const args = tool.arguments as Record<string, unknown> | null;
  if (args && typeof args === 'object' && typeof args.code === 'string') {
    return args.code;
  }
  return null;
}

export class ToolCardView {
  constructor(onDecision: (tool: IToolItem, decision: Decision) => void) {
    this._onDecision = onDecision;
    this.node = h('div', { class: 'jp-cloudide-chat-tool', testid: 'tool-card' });
  }

  readonly node: HTMLElement;

  update(tool: IToolItem): void {
    this.node.dataset.state = tool.state;
    this.node.dataset.tool = tool.name;
    const header = h('div', { class: 'jp-cloudide-chat-tool-header' },
      h('span', { class: 'jp-cloudide-chat-tool-name' }, tool.name),
      tool.path ? h('span', { class: 'jp-cloudide-chat-tool-path' }, tool.path) : null,
      h('span', { class: `jp-cloudide-chat-tool-state jp-mod-${tool.state}`,
        testid: 'tool-state' }, STATE_LABELS[tool.state]));
    const parts: (Node | null)[] = [header];

    const code = codeArgument(tool);
    const args = argumentsText(tool);
    if (code !== null) {
      parts.push(h('pre', { class: 'jp-cloudide-chat-tool-code', testid: 'tool-arguments' }, code));
    } else if (args) {
      const details = h('details', { class: 'jp-cloudide-chat-tool-args' },
        h('summary', {}, 'Arguments'),
        h('pre', { testid: 'tool-arguments' }, args));
      details.open = tool.state === 'awaiting_approval';
      parts.push(details);
    }

    if (tool.state === 'awaiting_approval' && tool.approval) {
      const { approval } = tool;
      const box = h('div', { class: 'jp-cloudide-chat-approval', testid: 'approval' },
        h('div', { class: 'jp-cloudide-chat-approval-reason' },
          `Allow ${tool.name}?${approval.reason ? ` (${approval.reason})` : ''}`));
      if (approval.risks.length) {
        box.appendChild(h('ul', { class: 'jp-cloudide-chat-approval-risks', testid: 'approval-risks' },
          ...approval.risks.map(r => h('li', {}, r))));
      }
      box.appendChild(h('div', { class: 'jp-cloudide-chat-approval-buttons' },
        button('Approve', 'approval-approve', () => this._decide(tool, 'allow'),
          { class: 'jp-mod-accept', title: 'Run this call once' }),
        button('Deny', 'approval-deny', () => this._decide(tool, 'deny'),
          { class: 'jp-mod-reject', title: 'Do not run it; the model is told' }),
        button('Always allow', 'approval-always', () => this._decide(tool, 'always'), {
          title: `Run ${tool.name} without asking for the rest of this conversation ` +
            '(risky code still asks)' })));
      parts.push(box);
    } else if (tool.decision) {
      parts.push(h('div', { class: 'jp-cloudide-chat-approval-sent' },
        tool.decision === 'deny' ? 'Denied; waiting for the agent…' : 'Approved; running…'));
    }
    if (tool.approvalError) {
      parts.push(h('div', { class: 'jp-cloudide-chat-approval-error', testid: 'approval-error' },
        tool.approvalError));
    }

    if (tool.diff) {
      parts.push(renderDiff(tool.diff));
    } else if (tool.diffOmitted) {
      parts.push(h('div', { class: 'jp-cloudide-chat-note' }, 'The change is too large to show.'));
    }
    if (tool.result !== null) {
      parts.push(this._result(tool.result, !tool.ok));
    }
    replaceChildren(this.node, ...parts);
  }

  dispose(): void {
    this.node.remove();
  }

  private _decide(tool: IToolItem, decision: Decision): void {
    // one click: the buttons go away at once (the model marks the decision)
    this.node.querySelectorAll('.jp-cloudide-chat-approval button').forEach(b => {
      (b as HTMLButtonElement).disabled = true;
    });
    this._onDecision(tool, decision);
  }

  private _result(text: string, failed: boolean): HTMLElement {
    const pre = h('pre', { class: 'jp-cloudide-chat-tool-result', testid: 'tool-result' });
    const details = h('details', { class: `jp-cloudide-chat-tool-output${failed ? ' jp-mod-failed' : ''}` },
      h('summary', {}, failed ? 'Error' : 'Result'), pre);
    details.open = failed || text.length < 300;
    if (text.length > RESULT_PREVIEW) {
      pre.textContent = text.slice(0, RESULT_PREVIEW) + '\n…';
      details.appendChild(button('Show all', 'tool-result-more', () => {
        pre.textContent = text;
      }));
    } else {
      pre.textContent = text;
    }
    return details;
  }

  private _onDecision: (tool: IToolItem, decision: Decision) => void;
}

export function renderNotice(item: INoticeItem): HTMLElement {
  return h('div', { class: `jp-cloudide-chat-notice jp-mod-${item.kind}`, testid: 'chat-notice' },
    item.text);
}

export function renderError(item: IErrorItem): HTMLElement {
  const { explanation } = item;
  const node = h('div', {
    class: `jp-cloudide-chat-error jp-mod-${explanation.kind}`,
    testid: 'chat-error',
    attrs: { role: 'alert', 'data-kind': explanation.kind }
  },
  h('div', { class: 'jp-cloudide-chat-error-title' }, explanation.title),
  h('div', { class: 'jp-cloudide-chat-error-action' }, explanation.action));
  if (explanation.detail && explanation.detail !== explanation.action) {
    node.appendChild(h('div', { class: 'jp-cloudide-chat-error-detail' }, explanation.detail));
  }
  return node;
}
