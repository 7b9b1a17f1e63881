import { describe, expect, it } from 'vitest';

import {
  buildFileInput,
  buildNotebookInput,
  charToJsIndex,
  fromWidget,
  ICellData,
  keepEnd,
  keepStart,
  languageFromMime,
  languageFromPath,
  normalizeLanguage
} from '../completer/context';

const code = (source: string): ICellData => ({ type: 'code', source });
const md = (source: string): ICellData => ({ type: 'markdown', source });
const raw = (source: string): ICellData => ({ type: 'raw', source });

/** A NotebookPanel as far as `fromWidget` reads it. */
function notebookPanel(cells: ICellData[], active: number, meta: Record<string, any> = {},
  path = 'work/analysis.ipynb') {
  return {
    context: { path },
    content: {
      activeCellIndex: active,
      model: {
        getMetadata: (key: string) => meta[key],
        sharedModel: {
          cells: cells.map(c => ({ cell_type: c.type, getSource: () => c.source }))
        }
      }
    }
  };
}

describe('buildNotebookInput', () => {
  it('sends the cells above and below around the cursor in the active cell', () => {
    const cells = [code('import pandas as pd\n'), code('df = pd.read_csv(path)'), code('df.head()')];
    const input = buildNotebookInput(
      { cells, activeIndex: 1, language: 'python', path: 'a.ipynb' },
      'df = pd.read_csv(path)', 'df = pd.read_'.length);
    expect(input).toEqual({
      prefix: '# %%\nimport pandas as pd\n\n# %%\ndf = pd.read_',
      suffix: 'csv(path)\n\n# %%\ndf.head()',
      language: 'python',
      path: 'a.ipynb'
    });
  });

  it('takes the editor text over the stored source of the active cell', () => {
    const cells = [code('x = 1'), code('y = ')];
    const input = buildNotebookInput({ cells, activeIndex: 1 }, 'y = x +', 7)!;
    expect(input.prefix).toBe('# %%\nx = 1\n\n# %%\ny = x +');
    expect(input.suffix).toBe('');
    expect(input.language).toBe('python');
  });

  it('sends a notebook of one cell like a file: no markers', () => {
    const input = buildNotebookInput({ cells: [code('a = 1\nb = ')], activeIndex: 0 },
      'a = 1\nb = ', 6)!;
    expect([input.prefix, input.suffix]).toEqual(['a = 1\n', 'b = ']);
  });

  it('keeps markdown cells as comments and skips raw and empty cells', () => {
    const cells = [
      md('## Load the data\n\nFrom *S3*.'), raw('%%raw stuff'), code('  \n'),
      code('df = load()'), md('Plot it'), code('plot(df)')
    ];
    const input = buildNotebookInput({ cells, activeIndex: 3 }, 'df = load()', 6)!;
    expect(input.prefix).toBe(
      '# %% [markdown]\n# ## Load the data\n#\n# From *S3*.\n\n# %%\ndf = l');
    expect(input.suffix).toBe('oad()\n\n# %% [markdown]\n# Plot it\n\n# %%\nplot(df)');
  });

  it("uses the language's line comment for markers", () => {
    const cells = [md('Note'), code('let x = 1'), code('x')];
    const input = buildNotebookInput({ cells, activeIndex: 1, language: 'TypeScript' },
      'let x = 1', 9)!;
    expect(input.prefix).toBe('// %% [markdown]\n// Note\n\n// %%\nlet x = 1');
    expect(input.suffix).toBe('\n\n// %%\nx');
    expect(input.language).toBe('typescript');
  });

  it('completes nothing in a markdown or raw cell', () => {
    expect(buildNotebookInput({ cells: [code('x'), md('# Ti')], activeIndex: 1 }, '# Ti', 4))
      .toBeNull();
    expect(buildNotebookInput({ cells: [raw('x')], activeIndex: 0 }, 'x', 1)).toBeNull();
    expect(buildNotebookInput({ cells: [], activeIndex: 0 }, '', 0)).toBeNull();
  });

  it('caps each side keeping the text nearest the cursor, at line boundaries', () => {
    const far = code(Array.from({ length: 50 }, (_, i) => `far_above_${i} = ${i}`).join('\n'));
    const near = code('near_above = 1');
    const below = code('near_below = 2');
    const farBelow = code(Array.from({ length: 50 }, (_, i) => `far_below_${i} = ${i}`).join('\n'));
    const cells = [far, near, code('value = '), below, farBelow];
    const input = buildNotebookInput({ cells, activeIndex: 2 }, 'value = ', 8,
      {}, { maxPrefixChars: 120, maxSuffixChars: 100 })!;
    expect(input.prefix.length).toBeLessThanOrEqual(120);
    expect(input.prefix.endsWith('# %%\nnear_above = 1\n\n# %%\nvalue = ')).toBe(true);
    expect(input.prefix).toMatch(/^far_above_\d+ = \d+\n/); // starts at a whole line
    expect(input.prefix).toContain('far_above_49 = 49');
    expect(input.prefix).not.toContain('far_above_0 ');
    expect(input.suffix.length).toBeLessThanOrEqual(100);
    expect(input.suffix.startsWith('\n\n# %%\nnear_below = 2\n\n# %%\nfar_below_0 = 0')).toBe(true);
    expect(input.suffix).toMatch(/far_below_\d+ = \d+$/);
    expect(input.suffix).not.toContain('far_below_49');
  });

  it('does not join thousands of far cells to cut them again', () => {
    const cells = Array.from({ length: 5000 }, (_, i) => code(`x${i} = ${'y'.repeat(100)}`));
    const t0 = Date.now();
    const input = buildNotebookInput({ cells, activeIndex: 2500 }, cells[2500].source, 3)!;
    expect(Date.now() - t0).toBeLessThan(500);
    expect(input.prefix.length).toBeLessThanOrEqual(40_000);
    expect(input.suffix.length).toBeLessThanOrEqual(40_000);
    expect(input.prefix.endsWith('# %%\nx2499 = ' + 'y'.repeat(100) + '\n\n# %%\nx25')).toBe(true);
    expect(input.suffix.startsWith('00 = y')).toBe(true);
  });
});

describe('buildFileInput', () => {
  it('splits the text at the cursor; language from the extension, else the MIME type', () => {
    expect(buildFileInput('def f(x):\n    return x', 14, { path: 'pkg/mod.py' })).toEqual({
      prefix: 'def f(x):\n    ', suffix: 'return x', language: 'python', path: 'pkg/mod.py'
    });
    expect(buildFileInput('SELECT ', 7, { path: 'q.unknownext', mimeType: 'text/x-sql' }))
      .toEqual({ prefix: 'SELECT ', suffix: '', language: 'sql', path: 'q.unknownext' });
    expect(buildFileInput('abc', 99, {})).toEqual({ prefix: 'abc', suffix: '' });
  });

  it('caps both sides', () => {
    const text = 'a'.repeat(30) + '\n' + 'b'.repeat(30) + '|' + 'c'.repeat(30) + '\n' + 'd'.repeat(30);
    const at = text.indexOf('|');
    const input = buildFileInput(text, at, {}, { maxPrefixChars: 40, maxSuffixChars: 40 });
    expect(input.prefix).toBe('b'.repeat(30));
    expect(input.suffix).toBe('|' + 'c'.repeat(30));
  });
});

describe('fromWidget', () => {
  it('reads a NotebookPanel: every cell from the shared model, kernel language, path', () => {
    const panel = notebookPanel([md('Intro'), code('x = 1'), code('print(x)')], 1,
      { language_info: { name: 'ipython3' } });
    const input = fromWidget(panel, { text: 'x = 1', offset: 4, mimeType: 'text/x-ipython' })!;
    expect(input).toEqual({
      prefix: '# %% [markdown]\n# Intro\n\n# %%\nx = ',
      suffix: '1\n\n# %%\nprint(x)',
      language: 'python',
      path: 'work/analysis.ipynb'
    });
  });

  it('falls back to kernelspec.language, then to the MIME type', () => {
    const r = notebookPanel([code('x <- 1'), code('y')], 1, { kernelspec: { language: 'R' } });
    expect(fromWidget(r, { text: 'y', offset: 1 })!.language).toBe('r');
    const none = notebookPanel([code('a'), code('b')], 1);
    expect(fromWidget(none, { text: 'b', offset: 1, mimeType: 'text/x-julia' })!.language)
      .toBe('julia');
  });

  it('finds the cell the request came from when it is not the active one', () => {
    const panel = notebookPanel([code('first()'), code('second()')], 0);
    const input = fromWidget(panel, { text: 'second()', offset: 6 })!;
    expect(input.prefix).toBe('# %%\nfirst()\n\n# %%\nsecond');
    expect(input.suffix).toBe('()');
  });

  it('reads the sources of far cells only when the budget leaves room for them', () => {
    const read = new Set<number>();
    const source = (i: number) => `cell_${i} = ${'z'.repeat(1000)}`;
    const panel = {
      content: {
        activeCellIndex: 500,
        model: { sharedModel: { cells: Array.from({ length: 1000 }, (_, i) => ({
          cell_type: 'code', getSource: () => { read.add(i); return source(i); } })) } }
      }
    };
    const input = fromWidget(panel, { text: source(500), offset: 4 }, { maxPrefixChars: 5000,
      maxSuffixChars: 3000 })!;
    expect(input.prefix.endsWith('# %%\ncell')).toBe(true);
    expect(read.size).toBeLessThan(15);
    expect(read.has(0)).toBe(false);
    expect(read.has(999)).toBe(false);
  });

  it('completes nothing in a markdown cell', () => {
    const panel = notebookPanel([code('x'), md('# Title')], 1);
    expect(fromWidget(panel, { text: '# Title', offset: 7, mimeType: 'text/x-ipythongfm' }))
      .toBeNull();
  });

  it('reads a file editor: the text at the cursor and the path', () => {
    const editor = { context: { path: 'src/app.ts' }, content: { model: { sharedModel: {} } } };
    expect(fromWidget(editor, { text: 'const a = ', offset: 10 })).toEqual({
      prefix: 'const a = ', suffix: '', language: 'typescript', path: 'src/app.ts'
    });
  });

  it('counts the offset in characters, as JupyterLab does (an emoji is one)', () => {
    const text = 'print("🎉 ok")\n';
    // the cursor after "ok": 11 characters, 12 UTF-16 units
    const input = fromWidget({ context: { path: 'a.py' } }, { text, offset: 11 })!;
    expect(input.prefix).toBe('print("🎉 ok');
    expect(input.suffix).toBe('")\n');
  });

  it('reads anything else (a console) as plain text', () => {
    expect(fromWidget({}, { text: 'import o', offset: 8, mimeType: 'text/x-ipython' }))
      .toEqual({ prefix: 'import o', suffix: '', language: 'python' });
  });
});

describe('helpers', () => {
  it('charToJsIndex', () => {
    expect(charToJsIndex('a🎉b', 0)).toBe(0);
    expect(charToJsIndex('a🎉b', 2)).toBe(3);
    expect(charToJsIndex('a🎉b', 3)).toBe(4);
    expect(charToJsIndex('abc', 10)).toBe(3);
  });

  it('keepEnd / keepStart cut at lines and never split a character', () => {
    expect(keepEnd('one\ntwo\nthree', 9)).toBe('three');
    expect(keepStart('one\ntwo\nthree', 9)).toBe('one\ntwo');
    expect(keepEnd('x🎉', 1)).toBe('');
    expect(keepStart('🎉x', 1)).toBe('');
    expect(keepEnd('short', 10)).toBe('short');
  });

  it('languages', () => {
    expect(normalizeLanguage('IPython')).toBe('python');
    expect(normalizeLanguage('  ')).toBeUndefined();
    expect(languageFromMime('text/x-rsrc')).toBe('r');
    expect(languageFromPath('a/b/Makefile')).toBeUndefined();
    expect(languageFromPath('x.tsx')).toBe('typescript');
  });
});
