/**
 * Assistant Markdown, rendered through JupyterLab's rendermime as UNTRUSTED output: the
 * HTML the Markdown becomes passes the chat sanitizer (`sanitizer.ts`) before it is DOM,
 * and the result is checked again (`hardenRendered`). Code blocks get Copy / Insert / Run
 * buttons. Streaming text is re-rendered at most every `THROTTLE_MS`.
 */

import {
  IRenderMimeRegistry,
  markdownRendererFactory,
  MimeModel,
  RenderMimeRegistry
} from '@jupyterlab/rendermime';
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';

import { button, h } from './dom';
import { ChatSanitizer, hardenRendered } from './sanitizer';

const THROTTLE_MS = 120;

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
  }

  readonly node: HTMLElement;

  /** Show `text` (Markdown); repeated calls while streaming are coalesced. */
  update(text: string): void {
    if (text === this._wanted) {
      return;
    }
    this._wanted = text;
    this._schedule();
  }

  dispose(): void {
    this._disposed = true;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._renderer?.dispose();
    this._renderer = null;
  }

  private _schedule(): void {
    if (this._busy || this._timer !== null || this._disposed) {
      return;
    }
    const wait = Math.max(0, this._lastRender + THROTTLE_MS - Date.now());
    this._timer = setTimeout(() => {
      this._timer = null;
      void this._render();
    }, this._lastRender ? wait : 0);
  }

  private async _render(): Promise<void> {
    if (this._disposed || this._busy) {
      return;
    }
    const text = this._wanted;
    this._busy = true;
    try {
      if (!this._renderer) {
        while (this.node.firstChild) {
          this.node.removeChild(this.node.firstChild); // a plain-text fallback
        }
        this._renderer = this._rendermime.createRenderer('text/markdown');
        this._renderer.addClass('jp-cloudide-chat-rendered');
        this.node.appendChild(this._renderer.node);
      }
      const model = new MimeModel({ data: { 'text/markdown': text }, trusted: false });
      await this._renderer.renderModel(model);
      if (!this._disposed && this._renderer) {
        const node = this._renderer.node;
        hardenRendered(node);
        this._decorateCode(node);
        // the renderer typesets only when attached as a widget; it is not (a plain node)
        const typeset = this._rendermime.latexTypesetter?.typeset(node);
        if (typeset instanceof Promise) {
          typeset.catch(() => undefined);
        }
      }
    } catch (error) {
      this._fallback(text);
      console.warn('jupyter_cloudide: chat Markdown could not be rendered', error);
    } finally {
      this._busy = false;
      this._lastRender = Date.now();
      this._rendered = text;
    }
    if (this._wanted !== this._rendered) {
      this._schedule();
    }
  }

  /** Rendering failed: the text as text. */
  private _fallback(text: string): void {
    this._renderer?.dispose();
    this._renderer = null;
    while (this.node.firstChild) {
      this.node.removeChild(this.node.firstChild);
    }
    this.node.appendChild(h('pre', { class: 'jp-cloudide-chat-plain' }, text));
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
  private _renderer: IRenderMime.IRenderer | null = null;
  private _wanted = '';
  private _rendered: string | null = null;
  private _busy = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _lastRender = 0;
  private _disposed = false;
}
