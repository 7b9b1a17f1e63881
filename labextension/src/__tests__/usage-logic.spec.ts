import { describe, expect, it } from 'vitest';

import {
  bucketAxis,
  bucketLabel,
  budgetLevel,
  budgetPercent,
  budgetText,
  formatAxisCost,
  formatAxisSeconds,
  formatCost,
  formatDuration,
  formatPercent,
  formatTokens,
  isUsageEvent,
  layoutBars,
  linearScale,
  modelRows,
  monthToDateCost,
  niceStep,
  niceTicks,
  OTHER_MODELS,
  parseTime,
  rangeText,
  stackCost,
  stackKernel,
  totalCards,
  UNKNOWN_MODEL,
  usageStatus
} from '../usage/logic';
import type { IUsageReport } from '../usage/types';

function report(extra: Partial<IUsageReport> = {}): IUsageReport {
  return {
    user: 'alice',
    since: '2026-11-19T10:00:00+00:00',
    until: '2026-11-22T10:00:00+00:00',
    bucket: 'day',
    totals: {
      cost: 1.23,
      input_tokens: 1000,
      output_tokens: 200,
      cached_tokens: 0,
      calls: 12,
      kernel_busy_seconds: 30.5,
      kernel_seconds: 600
    },
    models: [
      { model: 'gpt-4o-mini', cost: 1.2, input_tokens: 900, output_tokens: 150, calls: 10 },
      { model: 'claude-haiku', cost: 0.03, input_tokens: 100, output_tokens: 50, calls: 2 }
    ],
    series: [
      { t: '2026-11-21T00:00:00+00:00', model: 'gpt-4o-mini', cost: 0.5, input_tokens: 400, output_tokens: 50 },
      { t: '2026-11-21T00:00:00+00:00', model: 'claude-haiku', cost: 0.03 },
      { t: '2026-11-22T00:00:00+00:00', model: 'gpt-4o-mini', cost: 0.7 }
    ],
    kernel_series: [
      { t: '2026-11-20T00:00:00+00:00', busy_seconds: 12, seconds: 300 },
      { t: '2026-11-22T00:00:00+00:00', busy_seconds: 18.5, seconds: 300 }
    ],
    budget: null,
    ...extra
  };
}

const nov = (d: number) => Date.UTC(2026, 10, d);

describe('formats', () => {
  it('formats money', () => {
    expect(formatCost(1.234)).toBe('$1.23');
    expect(formatCost(1234.5)).toBe('$1,234.50');
    expect(formatCost(0)).toBe('$0.00');
    expect(formatCost(0.004)).toBe('<$0.01');
    expect(formatCost(0.0042, { precise: true })).toBe('$0.0042');
    expect(formatCost(0.00001, { precise: true })).toBe('<$0.0001');
    expect(formatCost(null)).toBe('$0.00');
    expect(formatCost(-2)).toBe('-$2.00');
  });

  it('formats tokens compactly', () => {
    expect(formatTokens(950)).toBe('950');
    expect(formatTokens(1000)).toBe('1k');
    expect(formatTokens(1234)).toBe('1.2k');
    expect(formatTokens(123_456)).toBe('123k');
    expect(formatTokens(999_999)).toBe('1M');
    expect(formatTokens(3_400_000)).toBe('3.4M');
    expect(formatTokens(2_000_000_000)).toBe('2B');
  });

  it('formats durations', () => {
    expect(formatDuration(0)).toBe('0 s');
    expect(formatDuration(4.25)).toBe('4.3 s');
    expect(formatDuration(30.5)).toBe('31 s');
    expect(formatDuration(200)).toBe('3 min 20 s');
    expect(formatDuration(1500)).toBe('25 min');
    expect(formatDuration(7500)).toBe('2 h 05 min');
    expect(formatDuration(-3)).toBe('0 s');
  });

  it('formats percentages and axis labels', () => {
    expect(formatPercent(0.061)).toBe('6%');
    expect(formatPercent(0.0042)).toBe('0.4%');
    expect(formatAxisCost(0)).toBe('$0');
    expect(formatAxisCost(0.25)).toBe('$0.25');
    expect(formatAxisCost(2.5)).toBe('$2.5');
    expect(formatAxisCost(1500)).toBe('$1,500');
    expect(formatAxisSeconds(30)).toBe('30 s');
    expect(formatAxisSeconds(300)).toBe('5 min');
    expect(formatAxisSeconds(7200)).toBe('2 h');
  });
});

describe('budget and status bar', () => {
  const budget = { limit: 20, spent: 1.23, period: 'month', warn_percent: 80 };

  it('computes the percentage and level', () => {
    expect(budgetPercent(budget)).toBeCloseTo(6.15);
    expect(budgetPercent(null)).toBeNull();
    expect(budgetPercent({ ...budget, limit: 0 })).toBeNull();
    expect(budgetLevel(budget)).toBe('ok');
    expect(budgetLevel({ ...budget, spent: 16 })).toBe('warning');
    expect(budgetLevel({ ...budget, spent: 15.99 })).toBe('ok');
    expect(budgetLevel({ ...budget, spent: 20 })).toBe('exceeded');
    expect(budgetLevel({ ...budget, spent: 10, warn_percent: 50 })).toBe('warning');
    expect(budgetLevel({ limit: 20, spent: 16, period: 'month' })).toBe('warning');
    expect(budgetLevel(null)).toBe('none');
  });

  it('shows the spend against a monthly budget', () => {
    const view = usageStatus(report({ budget }), new Date(nov(22)));
    expect(view.text).toBe('$1.23 / $20.00');
    expect(view.level).toBe('ok');
    expect(view.title).toMatch(/this month.*6%/);
    const warn = usageStatus(report({ budget: { ...budget, spent: 17 } }), new Date(nov(22)));
    expect(warn.level).toBe('warning');
  });

  it('names the period of a budget that is not monthly', () => {
    const view = usageStatus(
      report({ budget: { limit: 5, spent: 0.4, period: 'day' } }),
      new Date(nov(22))
    );
    expect(view.text).toBe('$0.40 / $5.00 today');
  });

  it('without a budget, sums the series of this month only', () => {
    const r = report({
      series: [
        { t: '2026-10-31T00:00:00+00:00', model: 'a', cost: 5 },
        { t: '2026-11-01T00:00:00+00:00', model: 'a', cost: 0.25 },
        { t: '2026-11-20T00:00:00+00:00', model: 'b', cost: 1 }
      ]
    });
    expect(monthToDateCost(r, new Date(Date.UTC(2026, 10, 21, 12)))).toBeCloseTo(1.25);
    expect(usageStatus(r, new Date(Date.UTC(2026, 10, 21, 12))).text).toBe('$1.25');
    expect(usageStatus(r, new Date(Date.UTC(2026, 10, 21, 12))).level).toBe('none');
  });

  it('prefers the budget figure for a monthly budget', () => {
    expect(monthToDateCost(report({ budget }), new Date(nov(22)))).toBe(1.23);
  });

  it('writes the budget line', () => {
    expect(budgetText(budget)).toBe('$1.23 of $20.00 this month (6%)');
    expect(budgetText(null)).toBeNull();
  });

  it('recognises turn.usage events', () => {
    expect(isUsageEvent({ type: 'event', payload: { kind: 'turn.usage', cost: 0.1 } })).toBe(true);
    expect(isUsageEvent({ type: 'event', payload: { kind: 'index.progress' } })).toBe(false);
    expect(isUsageEvent({ type: 'stream', payload: { kind: 'turn.usage' } })).toBe(false);
    expect(isUsageEvent({ type: 'event', payload: null })).toBe(false);
    expect(isUsageEvent({ type: 'event', replayed: true, payload: { kind: 'turn.usage' } })).toBe(false);
  });
});

describe('buckets', () => {
  it('lays out every day of the range, data days included', () => {
    const axis = bucketAxis('2026-11-19T10:00:00Z', '2026-11-22T10:00:00Z', 'day', [nov(21)]);
    expect(axis).toEqual([nov(19), nov(20), nov(21), nov(22)]);
  });

  it('does not add a bucket for an until on a bucket boundary', () => {
    expect(bucketAxis('2026-11-20T00:00:00Z', '2026-11-22T00:00:00Z', 'day', [])).toEqual([
      nov(20),
      nov(21)
    ]);
  });

  it('falls back to the buckets with data for unknown bucket sizes or bad times', () => {
    expect(bucketAxis('x', 'y', 'day', [nov(3) + 5000, nov(1)])).toEqual([nov(1), nov(3)]);
    expect(bucketAxis('2026-11-01Z', '2026-11-30Z', 'week', [nov(9), nov(2)])).toEqual([nov(2), nov(9)]);
  });

  it('parses times, reading offset-less date-times as UTC', () => {
    expect(parseTime('2026-11-21T00:00:00+00:00')).toBe(nov(21));
    expect(parseTime('2026-11-21T01:00:00+01:00')).toBe(nov(21));
    expect(parseTime('2026-11-21T00:00:00')).toBe(nov(21));
    expect(parseTime('2026-11-21 00:00:00.5')).toBe(nov(21) + 500);
    expect(parseTime('nope')).toBeNull();
    expect(parseTime(null)).toBeNull();
  });

  it('labels buckets in UTC', () => {
    expect(bucketLabel(nov(21), 'day')).toBe('Nov 21');
    expect(bucketLabel(nov(21) + 14 * 3_600_000, 'hour')).toBe('Nov 21 14h');
  });

  it('describes the range', () => {
    expect(rangeText(report(), 30)).toBe('Last 30 days (Nov 19 \u2013 Nov 22, UTC)');
  });
});

describe('stacking', () => {
  it('stacks cost per day per model, largest model at the bottom', () => {
    const s = stackCost(report());
    expect(s.names).toEqual(['gpt-4o-mini', 'claude-haiku']);
    expect(s.stacks.map(x => x.t)).toEqual([nov(19), nov(20), nov(21), nov(22)]);
    const day21 = s.stacks[2];
    expect(day21.total).toBeCloseTo(0.53);
    expect(day21.segments).toEqual([
      { series: 0, value: 0.5, y0: 0, y1: 0.5 },
      { series: 1, value: 0.03, y0: 0.5, y1: 0.53 }
    ]);
    expect(s.stacks[0].segments).toEqual([]);
    expect(s.max).toBeCloseTo(0.7);
  });

  it('adds up several rows of one model in one bucket and names missing models', () => {
    const s = stackCost(
      report({
        series: [
          { t: '2026-11-21T00:00:00+00:00', model: null, cost: 0.1 },
          { t: '2026-11-21T06:00:00+00:00', model: null, cost: 0.2 },
          { t: 'garbage', model: 'x', cost: 9 }
        ]
      })
    );
    expect(s.names).toEqual([UNKNOWN_MODEL]);
    expect(s.stacks.find(x => x.t === nov(21))!.total).toBeCloseTo(0.3);
  });

  it('folds the smallest models into Other beyond maxSeries', () => {
    const series = ['a', 'b', 'c', 'd'].map((model, i) => ({
      t: '2026-11-21T00:00:00+00:00',
      model,
      cost: 4 - i
    }));
    const s = stackCost(report({ series }), 3);
    expect(s.names).toEqual(['a', 'b', OTHER_MODELS]);
    const day = s.stacks.find(x => x.t === nov(21))!;
    expect(day.segments.map(seg => [seg.series, seg.value])).toEqual([
      [0, 4],
      [1, 3],
      [2, 3]
    ]);
  });

  it('leaves negative amounts out of the stack', () => {
    const s = stackCost(
      report({ series: [{ t: '2026-11-21T00:00:00+00:00', model: 'a', cost: -1 }] })
    );
    expect(s.max).toBe(0);
  });

  it('stacks kernel busy seconds per day', () => {
    const k = stackKernel(report());
    expect(k.names).toEqual(['Kernel busy time']);
    expect(k.stacks.map(x => x.total)).toEqual([0, 12, 0, 18.5]);
    expect(k.max).toBe(18.5);
  });
});

describe('scales', () => {
  it('picks nice steps', () => {
    expect(niceStep(0.13)).toBeCloseTo(0.2);
    expect(niceStep(2.2)).toBe(2.5);
    expect(niceStep(3)).toBe(5);
    expect(niceStep(7)).toBe(10);
    expect(niceStep(100)).toBe(100);
    expect(niceStep(0)).toBe(1);
  });

  it('makes ticks from zero to a nice maximum at or above the data', () => {
    expect(niceTicks(0.7)).toEqual({ max: 0.8, step: 0.2, ticks: [0, 0.2, 0.4, 0.6, 0.8] });
    expect(niceTicks(18.5)).toEqual({ max: 20, step: 5, ticks: [0, 5, 10, 15, 20] });
    expect(niceTicks(100)).toEqual({ max: 100, step: 25, ticks: [0, 25, 50, 75, 100] });
    expect(niceTicks(0).ticks).toEqual([0, 0.25, 0.5, 0.75, 1]);
  });

  it('scales linearly', () => {
    expect(linearScale(10, 200)(5)).toBe(100);
    expect(linearScale(0, 200)(5)).toBe(0);
  });
});

describe('chart layout', () => {
  const size = { width: 400, height: 200, margin: { top: 10, right: 10, bottom: 30, left: 50 } };

  it('places stacked bars inside the plot, proportional to value', () => {
    const layout = layoutBars(stackCost(report()), formatAxisCost, size);
    expect(layout.plot).toEqual({ x: 50, y: 10, width: 340, height: 160 });
    expect(layout.empty).toBe(false);
    // 4 days, 3 segments with values; axis max 0.8
    expect(layout.bars).toHaveLength(3);
    const [bottom21, top21, day22] = layout.bars;
    expect(bottom21.series).toBe(0);
    expect(bottom21.height).toBeCloseTo((0.5 / 0.8) * 160, 1);
    expect(bottom21.y + bottom21.height).toBeCloseTo(170, 1);
    expect(top21.y + top21.height).toBeCloseTo(bottom21.y, 1);
    expect(day22.x).toBeGreaterThan(top21.x);
    for (const bar of layout.bars) {
      expect(bar.x).toBeGreaterThanOrEqual(50);
      expect(bar.x + bar.width).toBeLessThanOrEqual(390.01);
      expect(bar.y).toBeGreaterThanOrEqual(10);
    }
    expect(top21.title).toBe('Nov 21 \u00b7 claude-haiku: $0.03 (total $0.53)');
    expect(layout.yTicks.map(t => t.label)).toEqual(['$0', '$0.2', '$0.4', '$0.6', '$0.8']);
    expect(layout.yTicks[0].pos).toBe(170);
    expect(layout.yTicks[4].pos).toBe(10);
    expect(layout.xTicks.map(t => t.label)).toEqual(['Nov 19', 'Nov 20', 'Nov 21', 'Nov 22']);
  });

  it('thins out bucket labels', () => {
    const r = report({ since: '2026-10-23T00:00:00Z', until: '2026-11-22T00:00:00Z' });
    const layout = layoutBars(stackKernel(r), formatAxisSeconds, size, 8);
    expect(layout.xTicks.length).toBeLessThanOrEqual(8);
    expect(layout.xTicks[0].label).toBe('Oct 23');
  });

  it('flags an empty chart', () => {
    const layout = layoutBars(stackCost(report({ series: [] })), formatAxisCost, size);
    expect(layout.empty).toBe(true);
    expect(layout.bars).toEqual([]);
  });
});

describe('tables and totals', () => {
  it('sorts models by cost with their share', () => {
    const rows = modelRows(report());
    expect(rows.map(r => r.model)).toEqual(['gpt-4o-mini', 'claude-haiku']);
    expect(rows[0].share).toBeCloseTo(1.2 / 1.23);
    expect(modelRows(report({ models: [{ model: null, cost: 0, input_tokens: 0, output_tokens: 0, calls: 1 }] }))[0])
      .toMatchObject({ model: UNKNOWN_MODEL, share: 0 });
  });

  it('summarises totals', () => {
    const cards = totalCards(report());
    expect(cards.map(c => [c.key, c.value])).toEqual([
      ['cost', '$1.23'],
      ['input', '1k'],
      ['output', '200'],
      ['kernel', '31 s']
    ]);
    expect(cards[0].detail).toBe('12 model calls');
    expect(cards[3].detail).toBe('of 10 min running (5%)');
  });

  it('survives missing fields', () => {
    const broken = { since: '', until: '', bucket: 'day' } as unknown as IUsageReport;
    expect(() => totalCards(broken)).not.toThrow();
    expect(stackCost(broken).stacks).toEqual([]);
    expect(stackKernel(broken).max).toBe(0);
    expect(modelRows(broken)).toEqual([]);
    expect(usageStatus(broken, new Date(nov(1))).text).toBe('$0.00');
  });
});
