import { describe, expect, it } from 'vitest';

import {
  budgetLevel,
  budgetNoticeText,
  budgetText,
  budgetWarningOf,
  formatBudgetAmount,
  usageStatus
} from '../usage/logic';
import type { IBudget, IUsageReport } from '../usage/types';

const monthly: IBudget = {
  scope: 'user:ada',
  metric: 'cost',
  period: 'month',
  limit: 20,
  spent: 16.4,
  reserved: 0.5,
  percent: 82,
  warn_percent: 80,
  state: 'warning',
  period_start: '2026-03-01T00:00:00+00:00',
  resets_at: '2026-04-01T00:00:00+00:00'
};

function report(budget: IBudget | null): IUsageReport {
  return {
    since: '2026-02-13T00:00:00+00:00',
    until: '2026-03-15T00:00:00+00:00',
    bucket: 'day',
    totals: {
      cost: 0,
      input_tokens: 0,
      output_tokens: 0,
      calls: 0,
      kernel_busy_seconds: 0,
      kernel_seconds: 0
    },
    models: [],
    series: [],
    kernel_series: [],
    budget,
    budgets: budget ? [budget] : []
  };
}

describe('budgets from the server', () => {
  it("takes the server's state over the arithmetic", () => {
    expect(budgetLevel({ ...monthly, spent: 1, state: 'warning' })).toBe('warning');
    // a zero limit is an exhausted budget, not "no budget"
    expect(budgetLevel({ ...monthly, limit: 0, spent: 0, state: 'exhausted' })).toBe(
      'exceeded'
    );
    expect(budgetLevel({ ...monthly, state: undefined, spent: 1 })).toBe('ok');
  });

  it('formats kernel-time budgets as durations', () => {
    const kernel: IBudget = { ...monthly, metric: 'kernel_seconds', limit: 7200, spent: 5400 };
    expect(formatBudgetAmount(kernel, 5400)).toBe('1 h 30 min');
    expect(budgetText(kernel)).toBe('1 h 30 min of 2 h 00 min this month (75%)');
    const view = usageStatus(report(kernel), new Date('2026-03-14T12:00:00Z'));
    expect(view.text).toBe('1 h 30 min / 2 h 00 min');
    expect(view.title).toMatch(/^Kernel time this month/);
    expect(view.level).toBe('warning');
  });

  it('turns the status item to its warning state', () => {
    const view = usageStatus(report(monthly), new Date('2026-03-14T12:00:00Z'));
    expect(view.level).toBe('warning');
    expect(view.text).toBe('$16.40 / $20.00');
    expect(view.title).toContain('Close to the budget.');
  });
});

describe('budget.warning events', () => {
  it('recognises the event frame and nothing else', () => {
    const frame = { type: 'event', payload: { kind: 'budget.warning', budget: monthly } };
    expect(budgetWarningOf(frame)).toEqual(monthly);
    expect(budgetWarningOf({ ...frame, replayed: true })).toBeNull();
    expect(budgetWarningOf({ type: 'event', payload: { kind: 'turn.usage' } })).toBeNull();
    expect(budgetWarningOf({ type: 'event', payload: { kind: 'budget.warning' } })).toBeNull();
    expect(budgetWarningOf({ type: 'stream', payload: frame.payload })).toBeNull();
  });

  it('writes the notice in words', () => {
    expect(budgetNoticeText(monthly)).toBe(
      'You have used 82% of your budget (monthly AI spending: $16.40 of $20.00). ' +
        'It resets on 2026-04-01 (UTC).'
    );
    const team: IBudget = {
      ...monthly,
      scope: 'group:research',
      period: 'day',
      spent: 25,
      resets_at: undefined
    };
    expect(budgetNoticeText(team)).toBe(
      'You have used all of the team budget of research (daily AI spending: $25.00 of $20.00).'
    );
  });
});
