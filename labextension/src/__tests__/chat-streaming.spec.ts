import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import {
  continuationPoint,
  IBlockRenderer,
  stableBoundary,
  StreamingMarkdown,
  TAIL_MAX_GAP_MS,
  tailGap
} from '../chat/streaming';
import { installMiniDom, MiniElement, MiniText } from './minidom';

let uninstall: () => void;
beforeEach(() => {
  uninstall = installMiniDom();
});
afterEach(() => uninstall());

/** The text after the cut, for readable expectations. */
function cut(text: string, from = 0): string {
  return text.slice(stableBoundary(text, from));
}

describe('stableBoundary', () => {
  it('cuts before a paragraph that follows a blank line, once its first character came', () => {
    expect(cut('One.\n\nTwo')).toBe('Two');
    expect(cut('# Title\n\nText and more')).toBe('Text and more');
    expect(cut('One.\n\nTwo.\n\nThree')).toBe('Three');
    expect(cut('One.\n\n')).toBe('One.\n\n'); // what follows is not known yet
    expect(cut('One.\nTwo')).toBe('One.\nTwo'); // no blank line: one paragraph
    expect(cut('\n\nOne')).toBe('\n\nOne'); // nothing before the blank line
    expect(cut('')).toBe('');
  });

  it('never cuts a list, indented continuations or an undecided marker', () => {
    expect(cut('Intro\n\n- a\n\n- b')).toBe('- a\n\n- b'); // a loose list stays one block
    expect(cut('1. a\n\n2. b')).toBe('1. a\n\n2. b');
    expect(cut('Intro\n- a\n\n- b')).toBe('Intro\n- a\n\n- b'); // the list interrupted it
    expect(cut('- a\n\n  more of a')).toBe('- a\n\n  more of a');
    expect(cut('Text\n\n    indented code')).toBe('Text\n\n    indented code');
    expect(cut('- a\n\n1')).toBe('- a\n\n1'); // may become "1. item" of the open list
    expect(cut('- a\n\n-')).toBe('- a\n\n-');
    expect(cut('Text\n\n1')).toBe('1'); // no list open: whatever it becomes, a new block
    expect(cut('- a\n- b\n\nAfter the list')).toBe('After the list');
    expect(cut('- a\n\nAfter\n\n- new list')).toBe('- new list');
    expect(cut('Text\n\n---')).toBe('---'); // a rule, not a list item
    expect(cut('- a\n\n10 items')).toBe('10 items');
  });

  it('does not cut inside fenced code or $$ math', () => {
    const code = 'Intro\n\n```python\nx = 1\n\ny = 2\n';
    expect(cut(code)).toBe('```python\nx = 1\n\ny = 2\n');
    expect(cut(code + '```\n\nAfter')).toBe('After');
    expect(cut('~~~\na\n\nb\n~~~\n\nAfter')).toBe('After');
    expect(cut('````\n```\n\nstill code\n````\n\nAfter')).toBe('After');
    expect(cut('````\n```\n\nstill code')).toBe('````\n```\n\nstill code');
    expect(cut('Intro\n\n$$\na\n\nb')).toBe('$$\na\n\nb');
    expect(cut('$$\na\n\nb\n$$\n\nAfter')).toBe('After');
    expect(cut('Inline $$x$$ math\n\nAfter')).toBe('After');
    expect(cut('Use ```x``` inline\n\nAfter')).toBe('After'); // not a fence
  });

  it('continues from an earlier cut', () => {
    const text = 'One.\n\nTwo.\n\nThree';
    const first = stableBoundary('One.\n\nTwo', 0);
    expect(first).toBe(6);
    expect(text.slice(stableBoundary(text, first))).toBe('Three');
    expect(stableBoundary('One.\n\nTwo', first)).toBe(first);
  });
});

describe('tailGap', () => {
  it('renders cheap tails every frame and costly ones less often, with a cap', () => {
    expect(tailGap(0)).toBe(0);
    expect(tailGap(3)).toBe(0);
    expect(tailGap(10)).toBe(30);
    expect(tailGap(1000)).toBe(TAIL_MAX_GAP_MS);
    expect(tailGap(NaN)).toBe(0);
  });
});

function el(tag: string, ...children: (MiniElement | string)[]): MiniElement {
  const e = new MiniElement(tag);
  e.append(...children);
  return e;
}

describe('continuationPoint', () => {
  it('finds the innermost last block, skipping whitespace between blocks', () => {
    const p = el('p', 'a ', el('strong', 'b'));
    const root = el('div', el('h2', 'T'), '\n', p, '\n');
    expect(continuationPoint(root as any)).toBe(p);
    const li = el('li', 'two');
    expect(continuationPoint(el('div', el('ul', el('li', 'one'), li, '\n')) as any)).toBe(li);
    const code = el('code', 'x = 1');
    const wrap = el('div', el('div', el('span', 'python')), el('pre', code));
    expect(continuationPoint(el('div', wrap) as any)).toBe(code);
    const empty = el('div');
    expect(continuationPoint(empty as any)).toBe(empty);
    const withText = el('div', el('p', 'a'), 'pending');
    expect(continuationPoint(withText as any)).toBe(withText);
  });
});

/** A renderer whose "Markdown" is the source in a <p>, resolved when the test says so. */
class FakeRenderers {
  constructor(public manual = false) {}
  made: { node: MiniElement; sources: string[]; disposed: boolean }[] = [];
  waiting: (() => void)[] = [];
  attached: string[] = [];
  fail = false;
  clock = 0;
  cost = 0;

  create = (): IBlockRenderer => {
    const record = { node: new MiniElement('div'), sources: [] as string[], disposed: false };
    this.made.push(record);
    return {
      node: record.node as any,
      render: (source: string) => {
        record.sources.push(source);
        const done = () => {
          if (this.fail) {
            throw new Error('render failed');
          }
          this.clock += this.cost;
          record.node.textContent = '';
          record.node.appendChild(el('p', source));
        };
        if (!this.manual) {
          return Promise.resolve().then(done);
        }
        return new Promise<void>((resolve, reject) => {
          this.waiting.push(() => {
            try {
              done();
              resolve();
            } catch (e) {
              reject(e);
            }
          });
        });
      },
      attached: (source: string) => this.attached.push(source),
      dispose: () => {
        record.disposed = true;
      }
    };
  };

  release(): void {
    const waiting = this.waiting;
    this.waiting = [];
    waiting.forEach(fn => fn());
  }
}

async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) {
    await Promise.resolve();
  }
}

function setup(manual = false) {
  const fake = new FakeRenderers(manual);
  const timers: { fn: () => void; ms: number }[] = [];
  const errors: unknown[] = [];
  const host = new MiniElement('div');
  const view = new StreamingMarkdown(host as any, {
    create: fake.create,
    onError: e => errors.push(e),
    now: () => fake.clock,
    setTimeout: (fn, ms) => {
      const t = { fn, ms };
      timers.push(t);
      return t;
    },
    clearTimeout: t => {
      const i = timers.indexOf(t);
      if (i >= 0) {
        timers.splice(i, 1);
      }
    }
  });
  const runTimers = () => {
    const due = timers.splice(0);
    due.forEach(t => t.fn());
  };
  return { fake, host, view, timers, errors, runTimers };
}

describe('StreamingMarkdown', () => {
  it('shows new text at once, as text, and renders it after', async () => {
    const { fake, host, view } = setup(true);
    view.update('Hello **wor');
    expect(host.textContent).toBe('Hello **wor'); // before any render finished
    expect(host.all().some(e => e.tagName === 'P')).toBe(false);
    fake.release();
    await flush();
    expect(host.textContent).toBe('Hello **wor');
    expect(host.querySelectorAll('p').length).toBe(1);
    expect(view.settled).toBe(true);
  });

  it('text arriving during a render is kept, once, after the render lands', async () => {
    const { fake, host, view } = setup(true);
    view.update('One');
    view.update('One two');
    expect(fake.made.length).toBe(1); // one render at a time
    view.update('One two three');
    fake.release();
    await flush();
    expect(host.textContent).toBe('One two three');
    // the pending text went into the rendered paragraph, then the next render took it
    expect(fake.made[0].sources).toEqual(['One']);
    fake.release();
    await flush();
    expect(fake.made[1].sources).toEqual(['One two three']);
    expect(fake.made[0].disposed).toBe(true);
    expect(host.textContent).toBe('One two three');
    expect(view.settled).toBe(true);
  });

  it('renders finished blocks once and only the growing block again', async () => {
    const { fake, host, view } = setup();
    const parts = ['# Ti', 'tle\n', '\nFirst para', 'graph.\n\n', '```py\nx = 1\n\n', 'y = 2\n```\n',
      '\nLast', ' words'];
    let text = '';
    for (const part of parts) {
      text += part;
      view.update(text);
      expect(host.textContent).toBe(text);
      await flush();
      expect(host.textContent).toBe(text);
    }
    expect(view.chunkCount).toBe(3);
    const chunks = fake.made.filter(r => !r.disposed).map(r => r.sources[0]);
    expect(chunks).toEqual(['# Title\n\n', 'First paragraph.\n\n', '```py\nx = 1\n\ny = 2\n```\n\n',
      'Last words']);
    // a renderer renders once; chunks are never rendered again
    expect(fake.made.every(r => r.sources.length === 1)).toBe(true);
    expect(fake.made.length).toBeLessThanOrEqual(parts.length + 3);
    expect(fake.attached).toContain('First paragraph.\n\n');
    expect(view.settled).toBe(true);
  });

  it('throttles the tail by its cost, and renders what is left when the timer fires', async () => {
    const { fake, host, view, timers, runTimers } = setup();
    fake.cost = 20; // each render "takes" 20 ms: the next tail render waits 60 ms
    view.update('a');
    await flush();
    view.update('a b');
    await flush();
    expect(fake.made.length).toBe(1);
    expect(host.textContent).toBe('a b'); // shown as text meanwhile
    expect(timers.length).toBe(1);
    expect(timers[0].ms).toBe(60);
    view.update('a b c');
    expect(timers.length).toBe(1); // one timer at a time
    fake.clock += 60;
    runTimers();
    await flush();
    expect(fake.made.length).toBe(2);
    expect(fake.made[1].sources).toEqual(['a b c']);
    expect(timers.length).toBe(0); // nothing left to render
    expect(view.settled).toBe(true);
  });

  it('a new block is rendered at once, whatever the tail gap', async () => {
    const { fake, view, timers } = setup();
    fake.cost = 50;
    view.update('First');
    await flush();
    view.update('First.\n\nSecond');
    await flush();
    expect(timers.length).toBe(0);
    expect(view.chunkCount).toBe(1);
  });

  it('starts over when the text is replaced, dropping a render in flight', async () => {
    const { fake, host, view } = setup(true);
    view.update('Old text');
    view.update('New');
    expect(host.textContent).toBe('New');
    fake.release(); // the old render lands: ignored
    await flush();
    expect(host.textContent).toBe('New');
    expect(fake.made[0].disposed).toBe(true);
    fake.release();
    await flush();
    expect(host.textContent).toBe('New');
    expect(host.querySelectorAll('p').length).toBe(1);
  });

  it('falls back to plain text when rendering fails', async () => {
    const { fake, host, view, errors } = setup();
    fake.fail = true;
    view.update('<b>x</b> **y**');
    await flush();
    expect(errors.length).toBe(1);
    const pre = host.querySelector('pre');
    expect(pre?.className).toBe('jp-cloudide-chat-plain');
    expect(pre?.childNodes[0]).toBeInstanceOf(MiniText);
    view.update('<b>x</b> **y** z');
    expect(host.textContent).toBe('<b>x</b> **y** z');
    expect(host.all().some(e => e.tagName === 'B')).toBe(false);
  });

  it('dispose drops renders in flight and disposes the renderers', async () => {
    const { fake, view } = setup(true);
    view.update('One.\n\nTwo');
    view.dispose();
    fake.release();
    await flush();
    expect(fake.made.every(r => r.disposed)).toBe(true);
    view.update('more'); // ignored
    expect(fake.made.length).toBe(1);
  });
});
