/**
 * Inline SVG bar charts drawn with DOM APIs from a layout computed in `logic.ts`.
 * Labels and tooltips are text nodes (model names come from the server).
 */

import type { IBarChartLayout } from './logic';

const SVG_NS = 'http://www.w3.org/2000/svg';
/** Colour slots defined in style/usage.css (`jp-cloudide-usage-series-<n>`). */
export const SERIES_COLOURS = 8;

export function seriesClass(series: number): string {
  return `jp-cloudide-usage-series-${((series % SERIES_COLOURS) + SERIES_COLOURS) % SERIES_COLOURS}`;
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  className?: string
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const name of Object.keys(attrs)) {
    node.setAttribute(name, String(attrs[name]));
  }
  if (className) {
    node.setAttribute('class', className);
  }
  return node;
}

function svgText(
  value: string,
  attrs: Record<string, string | number>,
  className: string
): SVGTextElement {
  const node = svg('text', attrs, className);
  node.textContent = value;
  return node;
}

export interface IChartOptions {
  /** `data-testid` of the `<svg>`. */
  testId: string;
  /** Accessible name of the chart. */
  label: string;
  /** Shown in the plot when there is nothing to draw. */
  emptyText: string;
}

/** An `<svg>` stacked bar chart for `layout`. */
export function renderBarChart(layout: IBarChartLayout, options: IChartOptions): SVGSVGElement {
  const { plot } = layout;
  const root = svg(
    'svg',
    {
      viewBox: `0 0 ${layout.width} ${layout.height}`,
      width: '100%',
      preserveAspectRatio: 'xMidYMid meet',
      role: 'img',
      'aria-label': options.label,
      'data-testid': options.testId
    },
    'jp-cloudide-usage-plot'
  );
  const title = svg('title');
  title.textContent = options.label;
  root.appendChild(title);

  const grid = svg('g', {}, 'jp-cloudide-usage-grid');
  for (const tick of layout.yTicks) {
    grid.appendChild(
      svg('line', { x1: plot.x, x2: plot.x + plot.width, y1: tick.pos, y2: tick.pos })
    );
    grid.appendChild(
      svgText(
        tick.label,
        { x: plot.x - 6, y: tick.pos, dy: '0.32em', 'text-anchor': 'end' },
        'jp-cloudide-usage-axis-label'
      )
    );
  }
  root.appendChild(grid);

  const bars = svg('g', {}, 'jp-cloudide-usage-bars');
  for (const bar of layout.bars) {
    if (bar.height <= 0) {
      continue;
    }
    const rect = svg(
      'rect',
      { x: bar.x, y: bar.y, width: bar.width, height: bar.height },
      `jp-cloudide-usage-bar ${seriesClass(bar.series)}`
    );
    const tip = svg('title');
    tip.textContent = bar.title;
    rect.appendChild(tip);
    bars.appendChild(rect);
  }
  root.appendChild(bars);

  const bottom = plot.y + plot.height;
  root.appendChild(
    svg(
      'line',
      { x1: plot.x, x2: plot.x + plot.width, y1: bottom, y2: bottom },
      'jp-cloudide-usage-baseline'
    )
  );
  const xAxis = svg('g', {}, 'jp-cloudide-usage-x-axis');
  for (const tick of layout.xTicks) {
    xAxis.appendChild(
      svgText(
        tick.label,
        { x: tick.pos, y: bottom + 16, 'text-anchor': 'middle' },
        'jp-cloudide-usage-axis-label'
      )
    );
  }
  root.appendChild(xAxis);

  if (layout.empty) {
    root.appendChild(
      svgText(
        options.emptyText,
        {
          x: plot.x + plot.width / 2,
          y: plot.y + plot.height / 2,
          'text-anchor': 'middle'
        },
        'jp-cloudide-usage-empty-label'
      )
    );
  }
  return root;
}

/** A legend: one swatch and name per series. */
export function renderLegend(names: readonly string[]): HTMLElement {
  const list = document.createElement('ul');
  list.className = 'jp-cloudide-usage-legend';
  names.forEach((name, i) => {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = `jp-cloudide-usage-swatch ${seriesClass(i)}`;
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(name));
    list.appendChild(item);
  });
  return list;
}
