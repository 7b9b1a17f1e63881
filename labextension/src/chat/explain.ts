/**
 * What went wrong, in words, with what to do about it: for refused requests (rate limit,
 * budget, not allowed, no models, connection) and for turns that ended badly (model error,
 * limits, cancelled). Pure text; the view shows it as text nodes.
 */

import { CloudIDEError } from '../errors';

export type ExplanationKind =
  | 'rate_limited'
  | 'budget'
  | 'forbidden'
  | 'model_not_allowed'
  | 'no_models'
  | 'model_error'
  | 'provider_auth'
  | 'limit'
  | 'cancelled'
  | 'truncated'
  | 'connection'
  | 'unavailable'
  | 'conflict'
  | 'invalid'
  | 'incomplete'
  | 'other';

export interface IExplanation {
  kind: ExplanationKind;
  /** One line: what happened. */
  title: string;
  /** What the user (or an admin) can do. */
  action: string;
  /** The server's own message, shown as detail. */
  detail: string;
  /** Seconds to wait before retrying, when known. */
  retryAfter: number | null;
}

function seconds(value: number): string {
  const s = Math.max(1, Math.ceil(value));
  return s === 1 ? '1 second' : `${s} seconds`;
}

const NO_MODELS_ACTION =
  'An administrator sets OPENAI_API_KEY / OPENAI_BASE_URL (or ANTHROPIC_API_KEY) in the ' +
  "server's environment, or declares c.CloudIDEApp.providers and c.CloudIDEApp.models in " +
  'jupyter_server_config.py, then restarts the server. Keys are never entered in the browser.';

/** Explain a failed request (REST or a `request` over the session channel). */
export function explainRequestError(error: unknown): IExplanation {
  if (!(error instanceof CloudIDEError)) {
    const detail = error instanceof Error ? error.message : String(error);
    return { kind: 'other', title: 'Something went wrong', action: 'Try again.', detail,
      retryAfter: null };
  }
  const { status, code, message, retryAfter } = error;
  const base = { detail: message, retryAfter };
  if (/budget/i.test(code) || (status === 429 && /budget/i.test(message))) {
    return { ...base, kind: 'budget', title: 'Your usage budget is used up',
      action: 'Ask an administrator to raise your budget, or wait until it resets' +
        (retryAfter ? ` (in ${seconds(retryAfter)})` : '') + '.' };
  }
  if (status === 429) {
    const wait = retryAfter !== null ? `Retry after ${seconds(retryAfter)}.` : 'Wait a moment and retry.';
    return { ...base, kind: 'rate_limited', title: 'Too many requests: the rate limit was reached',
      action: wait };
  }
  if (status === 403) {
    if (/model/i.test(message)) {
      return { ...base, kind: 'model_not_allowed', title: 'This model is not allowed for you',
        action: 'Pick another model in the model list (or "Auto"); an administrator decides ' +
          'who may use which model (c.CloudIDEApp.model_allowlist).' };
    }
    return { ...base, kind: 'forbidden', title: 'You are not allowed to use the AI agent here',
      action: 'Ask an administrator to grant you the cloudide:agent permission.' };
  }
  if (status === 404 && /no model available|not configured/i.test(message)) {
    return { ...base, kind: 'no_models', title: 'No model is available',
      action: /not configured/i.test(message)
        ? 'Pick one of the listed models, or "Auto".'
        : NO_MODELS_ACTION };
  }
  if (status === 0 || code === 'connection_lost' || code === 'network_error') {
    return { ...base, kind: 'connection', title: 'The connection to the server was lost',
      action: 'Check that the server is running; the panel reconnects on its own. If a turn ' +
        'was running, reopen the conversation to see how far it got.' };
  }
  if (status === 409) {
    return { ...base, kind: 'conflict', title: 'That is no longer possible', action: message };
  }
  if (status === 503) {
    return { ...base, kind: 'unavailable', title: 'The server is not ready',
      action: retryAfter ? `Retry after ${seconds(retryAfter)}.` : 'Retry in a moment.' };
  }
  if (status === 400 || status === 413) {
    return { ...base, kind: 'invalid', title: 'The server refused the message',
      action: status === 413 ? 'Send less text or fewer attachments.' :
        'Check the message and its attachments.' };
  }
  return { ...base, kind: 'other', title: `The request failed (HTTP ${status})`,
    action: 'Try again; if it keeps failing, the server log has the details.' };
}

const PROVIDER_ERROR = /^model error \(([a-z_]+)\):\s*([\s\S]*)$/;

/**
 * Explain the end of a turn that did not finish normally, from its `status` (`error`,
 * `limit`, `cancelled`, `truncated`, ...) and the server's message.
 */
export function explainTurnEnd(status: string, message: string | null | undefined
): IExplanation | null {
  const detail = message ?? '';
  const base = { detail, retryAfter: null };
  switch (status) {
    case 'ok':
    case 'running':
      return null;
    case 'cancelled':
      return { ...base, kind: 'cancelled', title: 'You stopped this turn',
        action: 'Send a new message to continue.' };
    case 'truncated':
      return { ...base, kind: 'truncated', title: 'The answer was cut off at the output limit',
        action: 'Ask the model to continue where it stopped.' };
    case 'limit':
      return { ...base, kind: 'limit', title: 'The turn stopped at a limit',
        action: 'Send "continue" to go on from here, or split the task into smaller steps. ' +
          'An administrator sets the limits (agent_max_steps, agent_max_seconds, ' +
          'agent_max_tokens).' };
    case 'incomplete':
      return { ...base, kind: 'incomplete', title: 'This turn did not finish',
        action: 'It may still be running in another tab, or the server restarted while it ' +
          'ran. Reopen the conversation later, or send the message again.' };
    default:
      break;
  }
  if (/budget/i.test(detail) && !/token budget/i.test(detail)) {
    return { ...base, kind: 'budget', title: 'Your usage budget is used up',
      action: 'Ask an administrator to raise your budget, or wait until it resets.' };
  }
  const provider = PROVIDER_ERROR.exec(detail);
  if (provider) {
    const [, kind, text] = provider;
    if (kind === 'auth') {
      return { ...base, detail: text, kind: 'provider_auth',
        title: 'The model provider refused the server\'s credentials',
        action: 'An administrator must check the provider key configured on the server.' };
    }
    const transient = ['rate_limited', 'overloaded', 'server', 'timeout', 'connection',
      'malformed'].includes(kind);
    const what: Record<string, string> = {
      rate_limited: 'The model provider is rate limiting requests',
      overloaded: 'The model provider is overloaded',
      server: 'The model provider had a server error',
      timeout: 'The model provider did not answer in time',
      connection: 'The model provider cannot be reached',
      malformed: 'The model provider sent a broken answer',
      not_found: 'The model provider does not know this model',
      bad_request: 'The model provider refused the request'
    };
    return { ...base, detail: text, kind: 'model_error',
      title: what[kind] ?? `The model failed (${kind})`,
      action: transient
        ? 'Every allowed model was tried. Try again in a minute, or pick another model.'
        : 'Pick another model, or shorten the conversation (start a new one).' };
  }
  if (/no model available/i.test(detail)) {
    return { ...base, kind: 'no_models', title: 'No model is available', action: NO_MODELS_ACTION };
  }
  if (/not allowed/i.test(detail) && /model/i.test(detail)) {
    return { ...base, kind: 'model_not_allowed', title: 'This model is not allowed for you',
      action: 'Pick another model in the model list (or "Auto").' };
  }
  return { ...base, kind: 'other', title: 'The turn failed',
    action: 'Try again; if it keeps failing, the server log has the details.' };
}

/** The setup text shown when the server offers no model at all. */
export const SETUP_HELP = NO_MODELS_ACTION;
