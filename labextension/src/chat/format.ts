/**
 * Text shown in the chat for numbers, prices, usage and models (pure; unit-tested).
 */

import type { IModelInfo, IUsage } from './types';

/** 1234567 → "1,234,567". */
export function formatInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** A cost in dollars with enough digits to be meaningful. */
export function formatCost(cost: number): string {
  if (!Number.isFinite(cost) || cost <= 0) {
    return '$0';
  }
  if (cost < 0.01) {
    return `$${cost.toFixed(4)}`;
  }
  return `$${cost.toFixed(cost < 1 ? 3 : 2)}`;
}

/** A price per 1k tokens. */
export function formatPrice(price: number | undefined | null): string {
  if (price === undefined || price === null || !Number.isFinite(price)) {
    return '?';
  }
  if (price === 0) {
    return '$0';
  }
  return `$${Number(price.toPrecision(3))}`;
}

/** The token and cost line of a turn: "1,200 in (800 cached) · 25 out · $0.0020 · m1". */
export function usageLine(usage: IUsage): string {
  const cached = usage.cachedTokens ? ` (${formatInt(usage.cachedTokens)} cached)` : '';
  const parts = [
    `${formatInt(usage.inputTokens)} in${cached}`,
    `${formatInt(usage.outputTokens)} out`,
    formatCost(usage.cost) + (usage.estimated ? ' (estimated)' : '')
  ];
  if (usage.models.length) {
    parts.push(usage.models.join(', '));
  }
  if (usage.calls > 1) {
    parts.push(`${usage.calls} model calls`);
  }
  return parts.join(' · ');
}

/** The label of a model in the picker: id, prices per 1k tokens, and a cooldown. */
export function modelLabel(model: IModelInfo): string {
  const price = model.price_per_1k;
  const prices = price
    ? ` — ${formatPrice(price.input)} in / ${formatPrice(price.output)} out per 1k tokens`
    : '';
  const cooling = model.health?.cooldown_s ? ' (cooling down)' : '';
  return `${model.id}${prices}${cooling}`;
}

/** A title for the picker entry: provider, window, capabilities, last error. */
export function modelTitle(model: IModelInfo): string {
  const lines = [
    `provider: ${model.provider}`,
    `context window: ${formatInt(model.context_window)} tokens`,
    `capabilities: ${model.capabilities.join(', ') || 'none'}`
  ];
  if (!model.capabilities.includes('tools')) {
    lines.push('no tool use: the agent picks another model for tool calls');
  }
  if (model.health?.last_error) {
    lines.push(`last error: ${model.health.last_error}`);
  }
  return lines.join('\n');
}

/** A short title for a context chip. */
export function chipLabel(item: { kind: string; path?: string; title?: string; text?: string }
): string {
  if (item.title) {
    return item.title;
  }
  const name = item.path ? item.path.split('/').pop() : '';
  switch (item.kind) {
    case 'selection': {
      const lines = item.text ? item.text.split('\n').length : 0;
      return `Selection${lines ? ` (${lines} line${lines === 1 ? '' : 's'})` : ''}`;
    }
    case 'cell':
      return `Cell${name ? ` in ${name}` : ''}`;
    default:
      return name || item.kind;
  }
}
