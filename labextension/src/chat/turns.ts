/**
 * Building blocks of the conversation state: creating turns and items, and turning stored
 * messages (`GET cloudide/api/conversations/<id>`) into turns. Pure; used by `model.ts`.
 */

import { explainTurnEnd } from './explain';
import type {
  IErrorItem,
  IStoredMessage,
  IToolItem,
  ITurn,
  IUsage,
  TurnItem,
  TurnStatus
} from './types';

const ENDED: ReadonlySet<TurnStatus> = new Set([
  'ok', 'error', 'cancelled', 'limit', 'truncated', 'incomplete'
]);

export function isEnded(status: TurnStatus): boolean {
  return ENDED.has(status);
}

/** Makes turns and items; numbers item keys uniquely within one conversation. */
export class TurnOps {
  /** A fresh number for a key. */
  next(): number {
    return this._next++;
  }

  newTurn(key: string, id: string | null): ITurn {
    return { key, id, rev: 0, user: null, items: [], status: 'running', usage: null,
      model: null, modelReason: null, prompt: null, startedSeq: null, live: false,
      requestId: null, undone: false, undoing: false };
  }

  itemKey(turn: ITurn, prefix: string): string {
    return `${turn.key}:${prefix}${this._next++}`;
  }

  setError(turn: ITurn, status: string, message: string): void {
    const explanation = explainTurnEnd(status, message);
    if (!explanation) {
      return;
    }
    replaceError(turn, { type: 'error', key: this.itemKey(turn, 'e'), rev: 0, status,
      message, explanation });
  }

  notice(turn: ITurn, kind: 'fallback' | 'retry' | 'summary' | 'undo' | 'note',
    text: string): void {
    addItem(turn, { type: 'notice', key: this.itemKey(turn, 'n'), rev: 0, kind, text });
  }

  /** The card of a tool call (created on first mention). */
  tool(turn: ITurn, toolCallId: string, name: string): IToolItem {
    const key = `${turn.key}:t:${toolCallId}`;
    const found = turn.items.find(i => i.type === 'tool' && i.key === key);
    if (found) {
      return found as IToolItem;
    }
    const tool: IToolItem = { type: 'tool', key, rev: 0, toolCallId, name, arguments: null,
      argumentsText: null, state: 'running', approval: null, decision: null,
      approvalError: null, result: null, ok: null, diff: null, diffOmitted: false, path: null,
      edits: false };
    addItem(turn, tool);
    return tool;
  }

  /** The turns of a stored conversation (message content shapes: agent/loop.py `_save`). */
  fromStored(messages: IStoredMessage[]): ITurn[] {
    const turns: ITurn[] = [];
    const byId = new Map<string, ITurn>();
    const turnOf = (id: string | null): ITurn => {
      const key = id ?? `stored-${this._next++}`;
      let turn = id ? byId.get(id) : undefined;
      if (!turn) {
        turn = this.newTurn(key, id);
        turn.status = 'incomplete';
        turns.push(turn);
        if (id) {
          byId.set(id, turn);
        }
      }
      return turn;
    };
    for (const message of messages) {
      const turn = turnOf(message.turn_id);
      const content = isObject(message.content) ? message.content : {};
      switch (message.role) {
        case 'user':
          turn.user = {
            text: String(content.text ?? ''),
            context: Array.isArray(content.context) ? content.context : [],
            task: typeof content.task === 'string' ? content.task : null
          };
          break;
        case 'assistant': {
          if (typeof content.text === 'string' && content.text) {
            addItem(turn, { type: 'assistant', key: this.itemKey(turn, 'a'), rev: 0,
              text: content.text });
          }
          const calls = Array.isArray(content.tool_calls) ? content.tool_calls : [];
          for (const call of calls) {
            const fn = isObject(call?.function) ? call.function : {};
            const tool = this.tool(turn, String(call?.id ?? ''), String(fn.name ?? 'tool'));
            tool.argumentsText = typeof fn.arguments === 'string' ? fn.arguments : null;
            tool.arguments = parseJSONObject(tool.argumentsText);
          }
          if (typeof content.model === 'string') {
            turn.model = content.model;
            turn.modelReason = typeof content.model_reason === 'string' ? content.model_reason : null;
          }
          // an answer without tool calls ends the turn, unless an error follows
          if (!calls.length) {
            turn.status = 'ok';
          }
          break;
        }
        case 'tool': {
          const tool = this.tool(turn, String(content.tool_call_id ?? ''), String(content.name ?? 'tool'));
          tool.ok = content.ok !== false;
          tool.state = tool.ok ? 'done' : 'failed';
          tool.result = content.content === undefined ? null : String(content.content);
          tool.edits = Array.isArray(content.checkpoints) && content.checkpoints.length > 0;
          if (typeof content.diff === 'string') {
            tool.diff = content.diff; // servers that store the diff with the result
          }
          break;
        }
        case 'error': {
          const status = String(content.status ?? 'error');
          turn.status = toStatus(status);
          this.setError(turn, status, String(content.message ?? ''));
          break;
        }
        case 'summary':
          this.notice(turn, 'summary',
            `Earlier turns (${content.turns ?? '?'}) were summarised for the model.`);
          break;
        case 'undo': {
          turn.undone = true;
          const restored = Array.isArray(content.restored) ? content.restored.length : 0;
          this.notice(turn, 'undo', `Undone: ${restored} change${restored === 1 ? '' : 's'} put back.`);
          break;
        }
        default:
          break;
      }
    }
    return turns;
  }

  private _next = 1;
}

/** Add an item to a turn; an error item stays the last one. */
export function addItem(turn: ITurn, item: TurnItem): void {
  const error = turn.items.findIndex(i => i.type === 'error');
  if (error >= 0 && item.type !== 'error') {
    turn.items.splice(error, 0, item); // the error stays last
  } else {
    turn.items.push(item);
  }
  turn.rev++;
}

export function replaceError(turn: ITurn, item: IErrorItem): void {
  turn.items = turn.items.filter(i => i.type !== 'error');
  turn.items.push(item);
}

/** Tool cards of an ended turn that never got a result. */
export function settleTools(turn: ITurn): void {
  if (!isEnded(turn.status)) {
    return;
  }
  for (const item of turn.items) {
    if (item.type !== 'tool' || item.result !== null) {
      continue;
    }
    if (item.state === 'awaiting_approval' || item.state === 'denied') {
      item.state = 'denied';
      item.result = 'Not run: the approval was denied or expired.';
    } else if (turn.status !== 'incomplete' || !turn.live) {
      item.state = 'failed';
      item.result = 'Not run (denied, refused or interrupted).';
    }
    item.rev++;
  }
}

export function toStatus(status: string): TurnStatus {
  switch (status) {
    case 'ok':
    case 'error':
    case 'cancelled':
    case 'limit':
    case 'truncated':
      return status;
    default:
      return 'error';
  }
}

export function addUsage(usage: IUsage | null, p: any): IUsage {
  const out: IUsage = usage
    ? { ...usage, models: [...usage.models] }
    : { inputTokens: 0, outputTokens: 0, cachedTokens: 0, cost: 0, estimated: false, calls: 0,
      models: [] };
  out.inputTokens += num(p.input_tokens);
  out.outputTokens += num(p.output_tokens);
  out.cachedTokens += num(p.cached_tokens);
  out.cost += num(p.cost);
  out.estimated = out.estimated || p.estimated === true;
  out.calls += 1;
  if (typeof p.model === 'string' && !out.models.includes(p.model)) {
    out.models.push(p.model);
  }
  return out;
}

export function num(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

export function str(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

export function isObject(value: unknown): value is Record<string, any> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function parseJSONObject(text: string | null): unknown {
  if (!text) {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

export function safeStringify(value: unknown): string | null {
  try {
    return JSON.stringify(value, null, 2) ?? null;
  } catch {
    return null;
  }
}
