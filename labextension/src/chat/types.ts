/**
 * Types of the chat client: the REST shapes of `api.yaml` (conversations, models), the
 * `chat.send` context items, and the client-side conversation state the panel renders.
 */

import type { IExplanation } from './explain';

// -- wire ---------------------------------------------------------------------------------

/** What the user attached to a message (`WsChatSend.context[]`). */
export interface IContextItem {
  kind: 'notebook' | 'cell' | 'selection' | 'file' | 'text';
  title?: string;
  path?: string;
  cell_id?: string;
  /** The item's own text (a selection, unsaved edits): wins over the saved file. */
  text?: string;
  start_line?: number;
  end_line?: number;
}

export type TaskName = 'agent' | 'chat' | 'explain' | 'fix';

export const TASKS: { name: TaskName; label: string; caption: string }[] = [
  { name: 'agent', label: 'Agent', caption: 'Reads, searches, edits and runs code (changes ask first)' },
  { name: 'chat', label: 'Chat', caption: 'Answers using read and search tools only' },
  { name: 'explain', label: 'Explain', caption: 'Explains code; reads only' },
  { name: 'fix', label: 'Fix', caption: 'Fixes the attached code with every tool' }
];

/** `GET cloudide/api/conversations` items. */
export interface IConversationInfo {
  id: string;
  title: string;
  model?: string | null;
  status?: string;
  created_at: string;
  updated_at: string;
}

/** A stored message (`GET cloudide/api/conversations/<id>`); content shapes: agent/loop.py. */
export interface IStoredMessage {
  id?: string;
  turn_id: string | null;
  role: 'user' | 'assistant' | 'tool' | 'error' | 'summary' | 'undo' | string;
  content: any;
  created_at?: string;
}

export interface IConversationDetail extends IConversationInfo {
  messages: IStoredMessage[];
}

/** One entry of `GET cloudide/api/models`. */
export interface IModelInfo {
  id: string;
  provider: string;
  context_window: number;
  max_output_tokens?: number;
  capabilities: string[];
  roles: string[];
  price_per_1k?: { input?: number; output?: number };
  quality?: number;
  discovered?: boolean;
  health?: {
    latency_ms?: number | null;
    error_rate?: number;
    cooldown_s?: number;
    last_error?: string | null;
  };
}

export interface IModelList {
  models: IModelInfo[];
  default?: string | null;
  strategy?: string;
}

/** The final response of `chat.send`. */
export interface ITurnResult {
  conversation_id: string;
  turn_id: string;
  status: string;
  error?: string;
  steps?: number;
  tokens?: number;
  model?: string | null;
}

// -- client state -------------------------------------------------------------------------

export type TurnStatus =
  | 'pending' // sent, no turn id yet
  | 'running'
  | 'ok'
  | 'error'
  | 'cancelled'
  | 'limit'
  | 'truncated'
  | 'incomplete'; // stored without an end (running elsewhere, or interrupted)

export type ToolState =
  | 'running'
  | 'awaiting_approval'
  | 'approved'
  | 'denied'
  | 'done'
  | 'failed';

interface IItemBase {
  /** Unique and stable within the conversation: the view's key. */
  key: string;
  /** Bumped on every change of the item. */
  rev: number;
}

export interface IAssistantItem extends IItemBase {
  type: 'assistant';
  /** Markdown, accumulated from `stream` deltas. */
  text: string;
}

export interface IApproval {
  id: string;
  argumentsHash: string;
  reason: string;
  risks: string[];
}

export interface IToolItem extends IItemBase {
  type: 'tool';
  toolCallId: string;
  name: string;
  /** Parsed arguments when known (approval request, stored call). */
  arguments: unknown;
  /** The arguments as the model sent them (JSON text), when known. */
  argumentsText: string | null;
  state: ToolState;
  approval: IApproval | null;
  /** The decision the user sent, while the server has not answered it. */
  decision: 'allow' | 'deny' | 'always' | null;
  /** Why the decision was refused (e.g. already decided). */
  approvalError: string | null;
  result: string | null;
  ok: boolean | null;
  /** Unified diff of a file or cell edit (`tool.result` `data.diff`). */
  diff: string | null;
  diffOmitted: boolean;
  path: string | null;
  /** The change can be undone (a write recorded a checkpoint). */
  edits: boolean;
}

export interface INoticeItem extends IItemBase {
  type: 'notice';
  kind: 'fallback' | 'retry' | 'summary' | 'undo' | 'note';
  text: string;
}

export interface IErrorItem extends IItemBase {
  type: 'error';
  status: string;
  message: string;
  explanation: IExplanation;
}

export type TurnItem = IAssistantItem | IToolItem | INoticeItem | IErrorItem;

export interface IUsage {
  inputTokens: number;
  outputTokens: number;
  cachedTokens: number;
  cost: number;
  /** Some counts were estimated (the provider sent none). */
  estimated: boolean;
  /** Model calls counted. */
  calls: number;
  models: string[];
}

export interface IPromptInfo {
  model: string | null;
  tokens: number | null;
  window: number | null;
  context: { title: string; status: string }[];
}

export interface ITurn {
  /** Stable view key (a local key until the server names the turn). */
  key: string;
  /** The server's turn id, once known. */
  id: string | null;
  rev: number;
  user: { text: string; context: IContextItem[]; task: string | null } | null;
  items: TurnItem[];
  status: TurnStatus;
  usage: IUsage | null;
  /** The model that answered (last step), and why the router chose it. */
  model: string | null;
  modelReason: string | null;
  prompt: IPromptInfo | null;
  /** The seq of this turn's `turn.started` frame. */
  startedSeq: number | null;
  /** Built from frames (live or replayed), not only from stored messages. */
  live: boolean;
  /** The `chat.send` request id while it is pending (its frames carry it). */
  requestId: number | null;
  undone: boolean;
  undoing: boolean;
}

export const WRITE_TOOLS = new Set([
  'write_file',
  'edit_file',
  'edit_cell',
  'insert_cell',
  'delete_cell'
]);
