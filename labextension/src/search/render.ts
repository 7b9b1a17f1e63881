/**
 * DOM of one search hit. Path, symbol and snippet come from indexed files: they are
 * untrusted and go into the DOM as text nodes and attribute values only, never as HTML.
 */

import { highlightSegments, hitLocationLabel, lineRangeLabel, splitPath } from './logic';
import type { ISearchHit } from './types';

/** An element with a class. */
export function el(tag: string, className: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  return node;
}

/** An element holding `value` as text (never parsed as HTML). */
export function textEl(tag: string, className: string, value: string): HTMLElement {
  const node = el(tag, className);
  node.textContent = value;
  return node;
}

/**
 * The list item of a hit: file name, folder, line range, symbol or cell, and the snippet
 * with the query `words` marked. `onOpen` runs on click (the list handles Enter/Space).
 */
export function renderHit(hit: ISearchHit, words: readonly string[], onOpen: () => void): HTMLLIElement {
  const item = document.createElement('li');
  item.className = 'jp-cloudide-search-result';
  item.tabIndex = 0;
  item.setAttribute('role', 'button');
  item.setAttribute('data-testid', 'search-result');
  item.setAttribute('data-path', String(hit.path));
  item.setAttribute('data-line', String(hit.start_line));
  item.title = `Open ${hit.path} at line ${hit.start_line} (score ${Number(hit.score).toFixed(4)})`;

  const head = el('div', 'jp-cloudide-search-result-head');
  const { name, dir } = splitPath(String(hit.path));
  head.appendChild(textEl('span', 'jp-cloudide-search-result-name', name));
  if (dir) {
    head.appendChild(textEl('span', 'jp-cloudide-search-result-dir', dir));
  }
  head.appendChild(textEl('span', 'jp-cloudide-search-result-lines', lineRangeLabel(hit)));
  item.appendChild(head);

  const where = hitLocationLabel(hit);
  if (where) {
    item.appendChild(textEl('div', 'jp-cloudide-search-result-where', where));
  }

  const snippet = el('pre', 'jp-cloudide-search-result-snippet');
  for (const segment of highlightSegments(String(hit.snippet ?? ''), words)) {
    snippet.appendChild(
      segment.match
        ? textEl('mark', 'jp-cloudide-search-match', segment.text)
        : document.createTextNode(segment.text)
    );
  }
  item.appendChild(snippet);

  item.addEventListener('click', onOpen);
  return item;
}
