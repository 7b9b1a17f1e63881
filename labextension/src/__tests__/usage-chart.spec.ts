/**
 * The SVG chart and legend builders, against a minimal stand-in for `document` that records
 * the tree and refuses `innerHTML`: server text (model names) must arrive as text nodes.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { renderBarChart, renderLegend, seriesClass } from '../usage/chart';
import { formatAxisCost, layoutBars, stackCost } from '../usage/logic';
import type { IUsageReport } from '../usage/types';
import { FakeElement, FakeText, installFakeDocument } from './fake-dom';

const EVIL = '<img src=x onerror=alert(1)>';

const report: IUsageReport = {
  since: '2026-11-20T00:00:00Z',
  until: '2026-11-22T00:00:00Z',
  bucket: 'day',
  totals: {
    cost: 1,
    input_tokens: 0,
    output_tokens: 0,
    calls: 1,
    kernel_busy_seconds: 0,
    kernel_seconds: 0
  },
  models: [],
  series: [
    { t: '2026-11-21T00:00:00Z', model: EVIL, cost: 1 },
    { t: '2026-11-21T00:00:00Z', model: 'gpt-4o-mini', cost: 0.5 }
  ],
  kernel_series: [],
  budget: null
};

describe('usage chart rendering', () => {
  let restore: () => void;
  beforeEach(() => {
    restore = installFakeDocument();
  });
  afterEach(() => restore());

  it('builds an svg with bars, ticks and text-only tooltips', () => {
    const layout = layoutBars(stackCost(report), formatAxisCost);
    const svg = renderBarChart(layout, {
      testId: 'usage-plot-cost',
      label: 'Cost per day',
      emptyText: 'nothing'
    }) as unknown as FakeElement;
    expect(svg.tagName).toBe('svg');
    expect(svg.namespaceURI).toBe('http://www.w3.org/2000/svg');
    expect(svg.getAttribute('data-testid')).toBe('usage-plot-cost');
    expect(svg.getAttribute('viewBox')).toBe(`0 0 ${layout.width} ${layout.height}`);
    const rects = svg.all('rect');
    expect(rects).toHaveLength(2);
    expect(rects[0].getAttribute('class')).toContain(seriesClass(0));
    const tip = rects[0].all('title')[0];
    expect(tip.children[0]).toBeInstanceOf(FakeText);
    expect(tip.textContent).toBe(`Nov 21 \u00b7 ${EVIL}: $1 (total $1.5)`);
    expect(svg.all('text').map(t => t.textContent)).toContain('Nov 21');
    expect(svg.all('text').map(t => t.textContent)).not.toContain('nothing');
  });

  it('says when there is nothing to draw', () => {
    const layout = layoutBars(stackCost({ ...report, series: [] }), formatAxisCost);
    const svg = renderBarChart(layout, {
      testId: 'usage-plot-kernel',
      label: 'k',
      emptyText: 'No kernel time'
    }) as unknown as FakeElement;
    expect(svg.all('rect')).toHaveLength(0);
    expect(svg.all('text').map(t => t.textContent)).toContain('No kernel time');
  });

  it('renders legend names as text nodes', () => {
    const legend = renderLegend([EVIL, 'b']) as unknown as FakeElement;
    const items = legend.all('li');
    expect(items).toHaveLength(2);
    expect(items[0].children[1]).toBeInstanceOf(FakeText);
    expect(items[0].textContent).toBe(EVIL);
    expect(items[0].all('span')[0].className).toContain(seriesClass(0));
  });

  it('wraps colour slots', () => {
    expect(seriesClass(9)).toBe('jp-cloudide-usage-series-1');
  });
});
