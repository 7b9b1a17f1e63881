/**
 * The sanitizer of chat Markdown. Model output is untrusted: it is rendered with
 * `trusted: false`, so JupyterLab's renderer passes the HTML it made from the Markdown
 * through this sanitizer before it becomes DOM. On top of JupyterLab's own rules this one
 *
 * - keeps only text-formatting tags (no forms, buttons, media, frames, SVG, styles);
 * - allows no `style`, `id`, `name` or `data-*` attribute (so no command-linker buttons);
 * - allows links only to http(s) and mailto (no `javascript:`, no relative or
 *   protocol-relative URLs into the server), opened in a new tab without a referrer;
 * - allows images only from `data:image/...` URLs: a remote image would load a resource
 *   (a tracking pixel, a request to an internal host) just by being shown - it is replaced
 *   by its alt text.
 *
 * It delegates the parsing to the application's sanitizer (sanitize-html under
 * JupyterLab's `Sanitizer`), passing stricter options.
 */

import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';

const ALLOWED_TAGS = [
  'a', 'abbr', 'b', 'blockquote', 'br', 'caption', 'code', 'dd', 'del', 'details', 'div',
  'dl', 'dt', 'em', 'figcaption', 'figure', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'i',
  'img', 'ins', 'kbd', 'li', 'mark', 'ol', 'p', 'pre', 's', 'samp', 'small', 'span',
  'strike', 'strong', 'sub', 'summary', 'sup', 'table', 'tbody', 'td', 'tfoot', 'th',
  'thead', 'tr', 'tt', 'u', 'ul', 'var'
];

const ALLOWED_ATTRIBUTES: Record<string, string[]> = {
  a: ['href', 'title', 'target', 'rel'],
  img: ['src', 'alt', 'title', 'width', 'height'],
  td: ['align', 'colspan', 'rowspan'],
  th: ['align', 'colspan', 'rowspan'],
  ol: ['start'],
  code: ['class'],
  span: ['class'],
  pre: ['class'],
  div: ['class'],
  figure: ['class']
};

/** Class names kept: syntax highlighting (CodeMirror), code languages, MathJax, Mermaid. */
const ALLOWED_CLASSES: Record<string, (string | RegExp)[]> = {
  code: [/^language-[\w+#.-]+$/],
  pre: [/^language-[\w+#.-]+$/],
  span: [/^ͼ[\w-]+$/, /^cm-[\w-]+$/, /^tok-[\w-]+$/, /^Mjx-[\w-]+$/i, /^MathJax[\w-]*$/],
  div: [/^jp-Mermaid[\w-]*$/, /^MathJax[\w-]*$/],
  figure: [/^jp-Mermaid[\w-]*$/]
};

const SAFE_LINK = /^(https?:\/\/|mailto:)/i;
const SAFE_IMAGE = /^data:image\/(png|jpe?g|gif|webp|bmp|svg\+xml)[;,]/i;

/** Whether a link target may be kept (absolute http(s) or mailto only). */
export function isSafeLink(href: string | null | undefined): boolean {
  return typeof href === 'string' && SAFE_LINK.test(href.trim());
}

/** Whether an image source may be kept (inline `data:image/...` only: nothing is fetched). */
export function isSafeImageSource(src: string | null | undefined): boolean {
  return typeof src === 'string' && SAFE_IMAGE.test(src.trim());
}

type Attribs = Record<string, string>;

/** The sanitize-html options (passed through JupyterLab's `Sanitizer.sanitize`). */
export const CHAT_SANITIZE_OPTIONS = {
  allowedTags: ALLOWED_TAGS,
  allowedAttributes: ALLOWED_ATTRIBUTES,
  allowedClasses: ALLOWED_CLASSES,
  allowedStyles: {},
  allowedSchemes: ['http', 'https', 'mailto'],
  allowedSchemesByTag: { img: ['data'] },
  allowedSchemesAppliedToAttributes: ['href', 'src', 'cite'],
  allowProtocolRelative: false,
  disallowedTagsMode: 'discard',
  transformTags: {
    a: (tagName: string, attribs: Attribs) => {
      const out: Attribs = {};
      if (isSafeLink(attribs.href)) {
        out.href = attribs.href.trim();
        out.target = '_blank';
        out.rel = 'noopener noreferrer nofollow';
      }
      if (attribs.title) {
        out.title = attribs.title;
      }
      return { tagName, attribs: out };
    },
    img: (tagName: string, attribs: Attribs) => {
      if (isSafeImageSource(attribs.src)) {
        return { tagName, attribs };
      }
      // a remote (or relative) image is not fetched: its alt text stands in
      const alt = attribs.alt || attribs.title || 'image';
      return { tagName: 'span', attribs: {}, text: `[${alt}]` };
    }
  }
};

/** An `ISanitizer` that applies the chat rules through another sanitizer. */
export class ChatSanitizer implements IRenderMime.ISanitizer {
  constructor(base: IRenderMime.ISanitizer) {
    this._base = base;
  }

  readonly allowNamedProperties = false;
  readonly allowCommandLinker = false;

  getAutolink(): boolean {
    return true;
  }

  sanitize(dirty: string, _options?: IRenderMime.ISanitizerOptions): string {
    // the caller's options are ignored: ours are the stricter ones
    return this._base.sanitize(dirty, CHAT_SANITIZE_OPTIONS as IRenderMime.ISanitizerOptions);
  }

  private _base: IRenderMime.ISanitizer;
}

/**
 * A second line of defence after rendering: whatever reached the DOM, strip command-linker
 * attributes, inline handlers and styles, non-http links and non-inline images. (The
 * sanitizer has removed them already; this holds if a base sanitizer ignored our options.)
 */
export function hardenRendered(host: HTMLElement): void {
  const all = host.querySelectorAll('*');
  all.forEach(el => {
    if (el.closest('mjx-container')) {
      return; // MathJax's own output (typeset after sanitizing; no model HTML gets there)
    }
    for (const attr of Array.from(el.attributes)) {
      const name = attr.name.toLowerCase();
      if (name.startsWith('on') || name.startsWith('data-') || name === 'style' ||
          name === 'id' || name === 'name' || name === 'srcset' || name === 'formaction' ||
          name === 'xlink:href' || name === 'background' || name === 'poster') {
        el.removeAttribute(attr.name);
      }
    }
    const tag = el.tagName.toLowerCase();
    if (tag === 'a') {
      const href = el.getAttribute('href');
      if (href !== null && !isSafeLink(href)) {
        el.removeAttribute('href');
      }
      if (el.hasAttribute('href')) {
        el.setAttribute('target', '_blank');
        el.setAttribute('rel', 'noopener noreferrer nofollow');
      }
    } else if (tag === 'img') {
      if (!isSafeImageSource(el.getAttribute('src'))) {
        el.replaceWith(document.createTextNode(`[${el.getAttribute('alt') || 'image'}]`));
      }
    } else if (['script', 'iframe', 'object', 'embed', 'link', 'meta', 'style', 'form',
      'input', 'button', 'textarea', 'select', 'video', 'audio', 'source', 'svg', 'math',
      'base'].includes(tag)) {
      el.remove();
    }
  });
}
