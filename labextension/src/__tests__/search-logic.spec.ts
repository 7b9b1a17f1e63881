import { describe, expect, it } from 'vitest';

import { Debouncer } from '../search/debounce';
import {
  buildSearchBody,
  describeError,
  editorLine,
  findCellIndex,
  highlightSegments,
  hitLocationLabel,
  indexProgress,
  indexStatusFromEvent,
  indexStatusText,
  lineRangeLabel,
  queryWords,
  resultCountText,
  resultsMessage,
  shouldSearchWhileTyping,
  splitPath
} from '../search/logic';
import type { IIndexStatus, ISearchHit } from '../search/types';

const idle: IIndexStatus = { state: 'idle', chunks: 1234, files: 56, complete: true };

function hit(extra: Partial<ISearchHit> = {}): ISearchHit {
  return {
    path: 'features/churn.py',
    language: 'python',
    kind: 'function',
    start_line: 12,
    end_line: 30,
    score: 0.03,
    snippet: 'def churn_features(df):',
    ...extra
  };
}

describe('buildSearchBody', () => {
  it('trims, drops defaults and an empty glob', () => {
    expect(buildSearchBody({ query: '  churn  ', mode: 'hybrid', pathGlob: '  ' })).toEqual({
      ok: true,
      body: { query: 'churn', k: 20 }
    });
  });

  it('passes a mode and a glob', () => {
    expect(buildSearchBody({ query: 'x', mode: 'text', pathGlob: ' src/**/*.py ', k: 5 })).toEqual({
      ok: true,
      body: { query: 'x', k: 5, mode: 'text', path_glob: 'src/**/*.py' }
    });
  });

  it('clamps k into the schema range', () => {
    const big = buildSearchBody({ query: 'x', k: 10 ** 9 });
    const small = buildSearchBody({ query: 'x', k: -1 });
    expect(big.ok && big.body.k).toBe(50);
    expect(small.ok && small.body.k).toBe(1);
  });

  it('refuses empty, too long, unknown mode and NUL globs', () => {
    expect(buildSearchBody({ query: '   ' })).toMatchObject({ ok: false, reason: 'empty' });
    expect(buildSearchBody({ query: 'a'.repeat(2001) })).toMatchObject({ ok: false, reason: 'invalid' });
    expect(buildSearchBody({ query: 'a', mode: "x' OR '1'='1" })).toMatchObject({
      ok: false,
      reason: 'invalid'
    });
    expect(buildSearchBody({ query: 'a', pathGlob: 'a\u0000b' })).toMatchObject({ ok: false });
    expect(buildSearchBody({ query: 'a', pathGlob: 'x'.repeat(513) })).toMatchObject({ ok: false });
  });

  it('searches while typing only from three characters', () => {
    expect(shouldSearchWhileTyping('ab')).toBe(false);
    expect(shouldSearchWhileTyping(' abc ')).toBe(true);
  });
});

describe('highlighting', () => {
  it('extracts query words, longest first, without duplicates', () => {
    expect(queryWords('Where do we compute the churn features? churn')).toEqual([
      'features',
      'compute',
      'churn',
      'where',
      'the',
      'do',
      'we'
    ]);
    expect(queryWords('*')).toEqual(['*']);
    expect(queryWords('   ')).toEqual([]);
  });

  it('splits text into matching and plain segments, case-insensitively', () => {
    const segments = highlightSegments('def Churn_rate(churn):', ['churn']);
    expect(segments).toEqual([
      { text: 'def ', match: false },
      { text: 'Churn', match: true },
      { text: '_rate(', match: false },
      { text: 'churn', match: true },
      { text: '):', match: false }
    ]);
  });

  it('gives the text back exactly, markup included', () => {
    const text = '<img src=x onerror=alert(1)> churn <script>churn()</script>';
    const segments = highlightSegments(text, queryWords('churn script'));
    expect(segments.map(s => s.text).join('')).toBe(text);
    expect(segments.filter(s => s.match).map(s => s.text)).toEqual([
      'churn',
      'script',
      'churn',
      'script'
    ]);
  });

  it('treats regex characters in words literally and merges adjacent matches', () => {
    expect(highlightSegments('a.b a+b', ['a.b'])).toEqual([
      { text: 'a.b', match: true },
      { text: ' a+b', match: false }
    ]);
    expect(highlightSegments('foobar', ['foo', 'bar'])).toEqual([{ text: 'foobar', match: true }]);
  });

  it('prefers the longest word at one position', () => {
    expect(highlightSegments('features', ['feat', 'features'].sort((a, b) => b.length - a.length))).toEqual([
      { text: 'features', match: true }
    ]);
  });

  it('handles empty inputs', () => {
    expect(highlightSegments('', ['x'])).toEqual([]);
    expect(highlightSegments('abc', [])).toEqual([{ text: 'abc', match: false }]);
  });

  it('keeps offsets right around characters whose lower case is longer', () => {
    const text = 'İstanbul churn';
    const segments = highlightSegments(text, ['churn']);
    expect(segments.map(s => s.text).join('')).toBe(text);
    expect(segments[segments.length - 1]).toEqual({ text: 'churn', match: true });
  });
});

describe('result labels', () => {
  it('labels line ranges', () => {
    expect(lineRangeLabel({ start_line: 12, end_line: 30 })).toBe('L12\u201330');
    expect(lineRangeLabel({ start_line: 7, end_line: 7 })).toBe('L7');
  });

  it('labels cells and symbols', () => {
    expect(hitLocationLabel(hit({ kind: 'cell', cell_index: 2, symbol: undefined }))).toBe('Cell 3');
    expect(hitLocationLabel(hit({ symbol: 'Model.fit' }))).toBe('Model.fit');
    expect(hitLocationLabel(hit({ kind: 'cell', cell_index: 0, symbol: 'load' }))).toBe(
      'Cell 1 \u00b7 load'
    );
    expect(hitLocationLabel(hit())).toBe('');
  });

  it('splits paths', () => {
    expect(splitPath('a/b/c.py')).toEqual({ name: 'c.py', dir: 'a/b' });
    expect(splitPath('c.py')).toEqual({ name: 'c.py', dir: '' });
  });

  it('counts results', () => {
    expect(resultCountText(1)).toBe('1 result');
    expect(resultCountText(1200)).toBe('1,200 results');
  });
});

describe('navigation helpers', () => {
  it('maps 1-based hit lines to clamped 0-based editor lines', () => {
    expect(editorLine(12)).toBe(11);
    expect(editorLine(12, 5)).toBe(4);
    expect(editorLine(0)).toBe(0);
    expect(editorLine(NaN, 10)).toBe(0);
  });

  it('finds the cell by id first, then by index', () => {
    const ids = ['a', 'b', 'c'];
    expect(findCellIndex({ cell_id: 'c', cell_index: 0 }, ids)).toBe(2);
    expect(findCellIndex({ cell_id: 'gone', cell_index: 1 }, ids)).toBe(1);
    expect(findCellIndex({ cell_index: 5 }, ids)).toBe(-1);
    expect(findCellIndex({}, ids)).toBe(-1);
  });
});

describe('index status', () => {
  it('describes each state', () => {
    expect(indexStatusText(idle)).toBe('1,234 chunks in 56 files');
    expect(indexStatusText({ ...idle, chunks: 1, files: 1 })).toBe('1 chunk in 1 file');
    expect(indexStatusText({ ...idle, complete: false })).toBe('1,234 chunks in 56 files (incomplete)');
    expect(indexStatusText({ ...idle, state: 'not_started' })).toBe('The index has not been built yet');
    expect(indexStatusText({ ...idle, state: 'queued' })).toBe('Index update queued');
    expect(indexStatusText({ ...idle, state: 'disabled' })).toMatch(/disabled/);
    expect(indexStatusText({ ...idle, state: 'error', error: 'OSError: disk full' })).toBe(
      'Index error: OSError: disk full'
    );
    expect(indexStatusText(null)).toBe('Index status unknown');
  });

  it('reports progress of a running pass', () => {
    const building: IIndexStatus = {
      ...idle,
      state: 'building',
      progress: { phase: 'indexing', files_total: 340, files_done: 12 }
    };
    expect(indexStatusText(building)).toBe('Indexing: 12 / 340 files');
    expect(indexProgress(building)).toEqual({ done: 12, total: 340, fraction: 12 / 340 });
    expect(indexProgress({ ...building, progress: { files_total: 0 } })).toBeNull();
    expect(indexStatusText({ ...building, progress: undefined })).toBe('Indexing\u2026');
    expect(indexProgress(idle)).toBeNull();
    // done never exceeds total
    expect(indexProgress({ ...building, progress: { files_total: 2, files_done: 5 } })?.fraction).toBe(1);
  });

  it('reads index.progress event frames and ignores others', () => {
    const frame = { type: 'event', seq: 3, payload: { kind: 'index.progress', index: idle } };
    expect(indexStatusFromEvent(frame)).toEqual(idle);
    expect(indexStatusFromEvent({ ...frame, replayed: true })).toBeNull();
    expect(indexStatusFromEvent({ type: 'event', payload: { kind: 'turn.usage' } })).toBeNull();
    expect(indexStatusFromEvent({ type: 'stream', payload: frame.payload })).toBeNull();
    expect(indexStatusFromEvent({ type: 'event', payload: { kind: 'index.progress', index: [] } })).toBeNull();
    expect(indexStatusFromEvent({ type: 'event', payload: { kind: 'index.progress', index: {} } })).toBeNull();
  });
});

describe('messages', () => {
  it('explains an index disabled on the server', () => {
    const m = describeError({
      status: 503,
      code: 'unavailable',
      message: 'the semantic index is disabled on this server'
    });
    expect(m.kind).toBe('warning');
    expect(m.text).toMatch(/turned off/);
    expect(m.text).toMatch(/index_enabled/);
    const other = describeError({ status: 503, message: 'needs a ContentsManager with a local root_dir' });
    expect(other.text).toMatch(/not available.*root_dir/);
  });

  it('maps rate limits, auth, bad input, network and aborts', () => {
    expect(describeError({ status: 429, retryAfter: 2.5 }).text).toBe('Too many searches. Try again in 3 s.');
    expect(describeError({ status: 403, message: 'Forbidden' }).kind).toBe('error');
    expect(describeError({ status: 400, message: 'k: too big' }).text).toMatch(/k: too big/);
    expect(describeError({ status: 0, code: 'network_error', message: 'down' }).text).toMatch(/reach/);
    expect(describeError({ status: 0, code: 'aborted', message: 'aborted' }).text).toBe('');
    expect(describeError(new Error('boom')).text).toBe('Search failed: boom');
  });

  it('says why there are no results', () => {
    expect(resultsMessage({ results: [], index: idle }, 'churn', null)).toEqual({
      kind: 'info',
      text: 'No results for \u201cchurn\u201d.'
    });
    const building = { ...idle, state: 'building', complete: false };
    expect(resultsMessage({ results: [], index: building }, 'churn', null)?.text).toMatch(
      /still being built/
    );
    expect(resultsMessage({ results: [hit()], index: building }, 'churn', null)?.text).toMatch(
      /may be incomplete/
    );
    expect(resultsMessage({ results: [hit()], index: idle }, 'churn', null)).toBeNull();
    expect(resultsMessage({ results: [] }, 'q', { ...idle, state: 'error', error: 'x' })?.kind).toBe('error');
  });
});

describe('Debouncer', () => {
  function fakeTimers() {
    let now = 0;
    const timers: { at: number; fn: () => void; id: number }[] = [];
    let next = 0;
    return {
      timers: {
        setTimeout: (fn: () => void, ms: number) => {
          const id = ++next;
          timers.push({ at: now + ms, fn, id });
          return id;
        },
        clearTimeout: (id: number) => {
          const i = timers.findIndex(t => t.id === id);
          if (i !== -1) {
            timers.splice(i, 1);
          }
        }
      },
      advance(ms: number) {
        now += ms;
        for (const t of timers.filter(t => t.at <= now)) {
          timers.splice(timers.indexOf(t), 1);
          t.fn();
        }
      }
    };
  }

  it('runs once after the last schedule', () => {
    const clock = fakeTimers();
    let runs = 0;
    const d = new Debouncer(() => runs++, 300, clock.timers);
    d.schedule();
    clock.advance(200);
    d.schedule();
    clock.advance(200);
    expect(runs).toBe(0);
    clock.advance(100);
    expect(runs).toBe(1);
    expect(d.pending).toBe(false);
  });

  it('flushes and cancels', () => {
    const clock = fakeTimers();
    let runs = 0;
    const d = new Debouncer(() => runs++, 300, clock.timers);
    d.flush();
    expect(runs).toBe(0);
    d.schedule();
    d.flush();
    expect(runs).toBe(1);
    d.schedule();
    d.cancel();
    clock.advance(1000);
    expect(runs).toBe(1);
  });
});
