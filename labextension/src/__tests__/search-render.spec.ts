/**
 * A search hit's DOM: untrusted path, symbol and snippet stay text; query words are marked.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { queryWords } from '../search/logic';
import { renderHit } from '../search/render';
import type { ISearchHit } from '../search/types';
import { FakeElement, FakeText, installFakeDocument } from './fake-dom';

const EVIL = '<img src=x onerror=alert(1)>';

const hit: ISearchHit = {
  path: `notebooks/${EVIL}.ipynb`,
  language: 'python',
  kind: 'cell',
  start_line: 3,
  end_line: 9,
  score: 0.0312,
  snippet: `df = churn(${EVIL})\n<script>alert('churn')</script>`,
  symbol: 'javascript:alert(1)',
  cell_id: 'abc',
  cell_index: 4
};

describe('renderHit', () => {
  let restore: () => void;
  beforeEach(() => {
    restore = installFakeDocument();
  });
  afterEach(() => restore());

  it('carries the test ids and the location as attributes', () => {
    const item = renderHit(hit, queryWords('churn'), () => undefined) as unknown as FakeElement;
    expect(item.tagName).toBe('li');
    expect(item.getAttribute('data-testid')).toBe('search-result');
    expect(item.getAttribute('data-path')).toBe(hit.path);
    expect(item.getAttribute('data-line')).toBe('3');
    expect(item.getAttribute('role')).toBe('button');
    expect(item.tabIndex).toBe(0);
  });

  it('renders path, lines, cell and symbol as text', () => {
    const item = renderHit(hit, [], () => undefined) as unknown as FakeElement;
    const spans = item.all('span').map(s => s.textContent);
    expect(spans).toEqual([`${EVIL}.ipynb`, 'notebooks', 'L3\u20139']);
    expect(item.all('div').map(d => d.textContent)).toContain('Cell 5 \u00b7 javascript:alert(1)');
    // no element was created from the markup in the data
    expect(item.all('img')).toEqual([]);
    expect(item.all('script')).toEqual([]);
    expect(item.all('a')).toEqual([]);
  });

  it('marks query words in the snippet and keeps the rest as text nodes', () => {
    const item = renderHit(hit, queryWords('churn'), () => undefined) as unknown as FakeElement;
    const pre = item.all('pre')[0];
    expect(pre.textContent).toBe(hit.snippet);
    const marks = pre.all('mark');
    expect(marks.map(m => m.textContent)).toEqual(['churn', 'churn']);
    for (const child of pre.children) {
      if (child instanceof FakeElement) {
        expect(child.tagName).toBe('mark');
        expect(child.children.every(c => c instanceof FakeText)).toBe(true);
      }
    }
    expect(item.all('script')).toEqual([]);
  });

  it('opens on click', () => {
    let opened = 0;
    const item = renderHit(hit, [], () => opened++) as unknown as FakeElement;
    item.dispatch('click');
    expect(opened).toBe(1);
  });
});
