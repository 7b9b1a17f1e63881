import { describe, expect, it } from 'vitest';

import { Sanitizer } from '@jupyterlab/apputils/lib/sanitizer';

import { parseUnifiedDiff } from '../chat/diff';
import { explainRequestError, explainTurnEnd } from '../chat/explain';
import { InflightStore } from '../chat/inflight';
import { ChatSanitizer, isSafeImageSource, isSafeLink } from '../chat/sanitizer';
import { CloudIDEError } from '../errors';
import { MemoryStorage } from './fakes';

describe('parseUnifiedDiff', () => {
  it('classifies the lines of a difflib diff with line numbers', () => {
    const diff = [
      '--- a/src/x.py', '+++ b/src/x.py', '@@ -1,3 +1,3 @@', ' keep', '-old', '+new', ' tail',
      '@@ -10,2 +10,3 @@', ' ctx', '+added', ' end', '\\ No newline at end of file', ''
    ].join('\n');
    const parsed = parseUnifiedDiff(diff);
    expect(parsed.lines.map(l => l.kind)).toEqual(['file', 'file', 'hunk', 'context', 'del',
      'add', 'context', 'hunk', 'context', 'add', 'context', 'meta']);
    expect([parsed.added, parsed.removed]).toEqual([2, 1]);
    expect(parsed.paths).toEqual(['src/x.py']);
    const del = parsed.lines[4];
    const add = parsed.lines[9];
    expect([del.oldLine, add.newLine]).toEqual([2, 11]);
  });

  it('a removed line that looks like a header stays a removal', () => {
    const diff = '--- a/notes.md\n+++ b/notes.md\n@@ -1,2 +1,2 @@\n--- a rule\n+++ new rule\n-x\n+y\n';
    const parsed = parseUnifiedDiff(diff);
    expect(parsed.lines.slice(3).map(l => l.kind)).toEqual(['del', 'add', 'del', 'add']);
    expect([parsed.added, parsed.removed]).toEqual([2, 2]);
  });

  it('a created file (from /dev/null) and empty or broken input', () => {
    const created = parseUnifiedDiff('--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+print(1)\n');
    expect(created.paths).toEqual(['new.py']);
    expect(created.added).toBe(1);
    expect(parseUnifiedDiff('').lines).toEqual([]);
    expect(parseUnifiedDiff(null).lines).toEqual([]);
    const junk = parseUnifiedDiff('<img src=x onerror=alert(1)>\n@@ broken\n');
    expect(junk.lines.map(l => [l.kind, l.text])).toEqual([
      ['meta', '<img src=x onerror=alert(1)>'], ['meta', '@@ broken']]);
  });
});

describe('error explanations', () => {
  const cases: [CloudIDEError, string, RegExp][] = [
    [new CloudIDEError('slow down', { status: 429, code: 'rate_limited', retryAfter: 2.5 }),
      'rate_limited', /Retry after 3 seconds/],
    [new CloudIDEError('spent', { status: 429, code: 'budget_exhausted', retryAfter: 3600 }),
      'budget', /raise your budget/],
    [new CloudIDEError("model 'x' is not allowed for you", { status: 403 }),
      'model_not_allowed', /Pick another model/],
    [new CloudIDEError('not authorized to use cloudide:agent', { status: 403 }),
      'forbidden', /cloudide:agent/],
    [new CloudIDEError('no model available for agent with tools', { status: 404 }),
      'no_models', /OPENAI_API_KEY/],
    [new CloudIDEError('lost', { status: 0, code: 'connection_lost' }), 'connection', /reconnects/],
    [new CloudIDEError('db starting', { status: 503, retryAfter: 5 }), 'unavailable', /5 seconds/]
  ];
  it.each(cases)('%s', (error, kind, action) => {
    const explained = explainRequestError(error);
    expect(explained.kind).toBe(kind);
    expect(explained.action).toMatch(action);
    expect(explained.detail).toBe(error.message);
  });

  it('explains how turns end', () => {
    expect(explainTurnEnd('ok', null)).toBeNull();
    const provider = explainTurnEnd('error', 'model error (timeout): no answer in 120 s')!;
    expect([provider.kind, provider.detail]).toEqual(['model_error', 'no answer in 120 s']);
    expect(provider.title).toMatch(/did not answer in time/);
    expect(explainTurnEnd('error', 'model error (auth): bad key')!.kind).toBe('provider_auth');
    const limit = explainTurnEnd('limit', 'stopped after 400000 tokens (the token budget)')!;
    expect(limit.kind).toBe('limit');
    expect(limit.action).toMatch(/agent_max_steps/);
    expect(explainTurnEnd('error', 'monthly budget exhausted')!.kind).toBe('budget');
    expect(explainTurnEnd('cancelled', 'the turn was cancelled')!.kind).toBe('cancelled');
    expect(explainTurnEnd('error', 'no model available for agent')!.kind).toBe('no_models');
    expect(explainTurnEnd('error', 'the turn failed (see the server log)')!.kind).toBe('other');
  });
});

describe('InflightStore', () => {
  it('remembers running turns per session, replays from before the oldest', () => {
    const storage = new MemoryStorage();
    let now = 1_000_000;
    const store = new InflightStore(storage, 'k', () => now);
    const base = { conversationId: 'c', sessionId: 's1', text: 'x'.repeat(10_000),
      context: [{ kind: 'selection' as const, text: 'secret-ish selection' }], task: null };
    store.add({ ...base, turnId: 't2', seq: 40 });
    store.add({ ...base, turnId: 't1', seq: 12 });
    store.add({ ...base, turnId: 'other', seq: 3, sessionId: 's0' });
    expect(store.replayPoint('s1')).toBe(11);
    expect(store.list('s1').map(t => t.turnId)).toEqual(['t1', 't2']);
    const kept = new InflightStore(storage, 'k', () => now).list();
    expect(kept[0].text.length).toBeLessThan(10_000);
    expect(kept[0].context).toEqual([{ kind: 'selection' }]);
    store.remove('t1');
    expect(store.replayPoint('s1')).toBe(39);
    now += 7 * 3600 * 1000;
    expect(store.list('s1')).toEqual([]);
    storage.setItem('k', '{not json');
    expect(store.list()).toEqual([]);
  });
});

describe('ChatSanitizer', () => {
  const base = new Sanitizer();
  const sanitizer = new ChatSanitizer(base);
  const clean = (html: string) => sanitizer.sanitize(html);

  it('drops script, handlers, javascript: links and command-linker buttons', () => {
    const out = clean('<p onclick="x()">hi</p><script>alert(1)</script>' +
      '<a href="javascript:alert(1)">a</a><button data-commandlinker-command="terminal:create-new">b</button>' +
      '<div data-commandlinker-command="x" data-commandlinker-args="{}">d</div>' +
      '<iframe src="https://evil"></iframe><form action="/x"><input></form>');
    expect(out).not.toMatch(/script|onclick|javascript|commandlinker|iframe|form|input|button/i);
    expect(out).toContain('hi');
  });

  it('never loads a remote resource: images by URL become their alt text', () => {
    const out = clean('<img src="https://evil.example/p.png" alt="chart">' +
      '<img src=x onerror=alert(1)><img src="//evil/x.gif">' +
      '<p style="background-image:url(https://evil/)">s</p>' +
      '<img src="data:image/png;base64,iVBORw0KGgo=" alt="ok">');
    expect(out).not.toMatch(/evil|onerror|style|src="x"/);
    expect(out).toContain('[chart]');
    expect(out).toContain('src="data:image/png;base64,iVBORw0KGgo="');
  });

  it('keeps Markdown formatting, highlighting classes and safe links', () => {
    const out = clean('<h2 id="t">T</h2><pre><code class="language-python">' +
      '<span class="ͼp">def</span></code></pre><a href="https://docs.example/x">d</a>' +
      '<a href="/api/contents/x">rel</a><span class="jp-Dialog">x</span>');
    expect(out).toContain('<code class="language-python">');
    expect(out).toContain('<span class="ͼp">def</span>');
    expect(out).toContain('href="https://docs.example/x"');
    expect(out).toContain('rel="noopener noreferrer nofollow"');
    expect(out).not.toContain('/api/contents');
    expect(out).not.toContain('jp-Dialog');
    expect(out).not.toContain('id="t"');
  });

  it('URL rules', () => {
    expect(isSafeLink('https://x')).toBe(true);
    expect(isSafeLink(' JavaScript:alert(1)')).toBe(false);
    expect(isSafeLink('//evil')).toBe(false);
    expect(isSafeImageSource('data:image/svg+xml,%3Csvg%3E')).toBe(true);
    expect(isSafeImageSource('data:text/html,<script>')).toBe(false);
    expect(isSafeImageSource('http://x/y.png')).toBe(false);
  });
});
