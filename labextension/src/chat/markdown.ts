/**
 * Assistant Markdown, rendered through JupyterLab's rendermime as UNTRUSTED output: the
 * HTML the Markdown becomes passes the chat sanitizer (`sanitizer.ts`) before it is DOM,
 * and the result is checked again (`hardenRendered`). Code blocks get Copy / Insert / Run
 * buttons. A streamed message is rendered block by block (`streaming.ts`): finished blocks
 * once, the growing last one as often as its cost allows, and new text is shown as text at
 * once until then.
 */

import {
  IRenderMimeRegistry,
  markdownRendererFactory,
  MimeModel,
  RenderMimeRegistry
} from '@jupyterlab/rendermime';

import { button, h } from './dom';
import { ChatSanitizer, hardenRendered } from './sanitizer';
import { IBlockRenderer, StreamingMarkdown } from './streaming';

/** Text that may hold LaTeX (typesetting is skipped for the rest). */
const MATH_HINT = /\$|\\\(|\\\[|\\begin\{/;

/** What a code block's buttons do (implemented against the notebook/editor trackers). */
export interface ICodeActions {
  copy(code: string): void;
  /** Insert at the cursor of the active notebook cell or file editor. */
  insert(code: string): void;
  /** Insert as a new cell below the active one in the active notebook, and run it. */
  run(code: string): void;
}

/**
 * A registry for chat Markdown only: the application's Markdown parser and LaTeX
 * typesetter, the chat sanitizer, and no URL resolver or link handler (links in model output
 * never open workspace files or call server URLs).
 */
export function createChatRendermime(base: IRenderMimeRegistry): IRenderMimeRegistry {
  return new RenderMimeRegistry({
    initialFactories: [markdownRendererFactory],
    sanitizer: new ChatSanitizer(base.sanitizer),
    markdownParser: base.markdownParser ?? undefined,
    latexTypesetter: base.latexTypesetter ?? undefined
  });
}

export class MarkdownView {
  constructor(rendermime: IRenderMimeRegistry, actions: ICodeActions | null) {
    this._rendermime = rendermime;
    this._actions = actions;
    this.node = h('div', { class: 'jp-cloudide-chat-markdown' });
    this._stream = new StreamingMarkdown(this.node, {
      create: () => this._createBlock(),
      onError: error => console.warn('jupyter_cloudide: chat Markdown could not be rendered', error)
    });
  }

  readonly node: HTMLElement;

  /**
   * Show `text` (Markdown). Text that extends what is shown is on screen at once (as text,
   * until its block is rendered); see `StreamingMarkdown`.
   */
  update(text: string): void {
    this._stream.update(text);
  }

  dispose(): void {
    this._stream.dispose();
  }

  /** A renderer for one piece (a stable chunk or the tail) of the message. */
  private _createBlock(): IBlockRenderer {
    const rendermime = this._rendermime;
    const renderer = rendermime.createRenderer('text/markdown');
    renderer.addClass('jp-cloudide-chat-rendered');
    const node = renderer.node;
    return {
      node,
      render: async (source: string) => {
        const model = new MimeModel({ data: { 'text/markdown': source }, trusted: false });
        await renderer.renderModel(model);
        hardenRendered(node);
        this._decorateCode(node);
      },
      attached: (source: string) => {
        // the renderer typesets only when attached as a widget; it is not (a plain node)
        if (MATH_HINT.test(source)) {
          const typeset = rendermime.latexTypesetter?.typeset(node);
          if (typeset instanceof Promise) {
            typeset.catch(() => undefined);
          }
        }
      },
      dispose: () => renderer.dispose()
    };
  }

  private _decorateCode(root: HTMLElement): void {
    const actions = this._actions;
    root.querySelectorAll('pre').forEach(pre => {
      const code = pre.textContent ?? '';
      if (!code.trim()) {
        return;
      }
      const lang = /language-([\w+#.-]+)/.exec(pre.querySelector('code')?.className ?? '');
      const bar = h('div', { class: 'jp-cloudide-chat-codebar', testid: 'code-actions' },
        h('span', { class: 'jp-cloudide-chat-codelang' }, lang ? lang[1] : ''));
      bar.appendChild(button('Copy', 'code-copy', () => actions?.copy(code), {
        title: 'Copy the code' }));
      if (actions) {
        bar.appendChild(button('Insert', 'code-insert', () => actions.insert(code), {
          title: 'Insert at the cursor of the active notebook cell or editor' }));
        bar.appendChild(button('Run', 'code-run', () => actions.run(code), {
          title: "Add as a new cell below the active cell and run it in the notebook's kernel" }));
      }
      const wrap = h('div', { class: 'jp-cloudide-chat-codeblock' });
      pre.replaceWith(wrap);
      wrap.appendChild(bar);
      wrap.appendChild(pre);
    });
  }

  private _rendermime: IRenderMimeRegistry;
  private _actions: ICodeActions | null;
  private _stream: StreamingMarkdown;
}
