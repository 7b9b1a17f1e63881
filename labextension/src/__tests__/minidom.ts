/**
 * Just enough of a DOM to run the chat's view code in node (no jsdom here). Setting
 * `innerHTML`/`outerHTML` or calling `insertAdjacentHTML` throws: the views must build
 * everything from elements and text nodes.
 */

export class MiniNode {
  parentNode: MiniElement | null = null;
  childNodes: MiniNode[] = [];

  get firstChild(): MiniNode | null {
    return this.childNodes[0] ?? null;
  }

  get nextSibling(): MiniNode | null {
    const siblings = this.parentNode?.childNodes ?? [];
    return siblings[siblings.indexOf(this) + 1] ?? null;
  }

  get textContent(): string {
    return this.childNodes.map(c => c.textContent).join('');
  }

  remove(): void {
    this.parentNode?.removeChild(this);
  }

  replaceWith(node: MiniNode): void {
    const parent = this.parentNode;
    if (parent) {
      parent.insertBefore(node, this);
      parent.removeChild(this);
    }
  }
}

export class MiniText extends MiniNode {
  constructor(public data: string) {
    super();
  }

  get textContent(): string {
    return this.data;
  }
}

type Listener = (ev: any) => void;

export class MiniElement extends MiniNode {
  constructor(tag: string) {
    super();
    this.tagName = tag.toUpperCase();
  }

  readonly tagName: string;
  attrs = new Map<string, string>();
  listeners = new Map<string, Listener[]>();
  hidden = false;
  disabled = false;
  open = false;
  value = '';
  scrollTop = 0;
  scrollHeight = 0;
  clientHeight = 0;

  get className(): string {
    return this.attrs.get('class') ?? '';
  }

  set className(value: string) {
    this.attrs.set('class', value);
  }

  get title(): string {
    return this.attrs.get('title') ?? '';
  }

  set title(value: string) {
    this.attrs.set('title', value);
  }

  get dataset(): Record<string, string> {
    return new Proxy({} as Record<string, string>, {
      get: (_, key: string) => this.attrs.get(`data-${toKebab(key)}`),
      set: (_, key: string, value) => {
        this.attrs.set(`data-${toKebab(key)}`, String(value));
        return true;
      }
    });
  }

  get textContent(): string {
    return super.textContent;
  }

  set textContent(value: string) {
    for (const child of [...this.childNodes]) {
      this.removeChild(child);
    }
    if (value) {
      this.appendChild(new MiniText(value));
    }
  }

  set innerHTML(_: string) {
    throw new Error('innerHTML used');
  }

  set outerHTML(_: string) {
    throw new Error('outerHTML used');
  }

  insertAdjacentHTML(): void {
    throw new Error('insertAdjacentHTML used');
  }

  setAttribute(name: string, value: string): void {
    this.attrs.set(name, String(value));
  }

  getAttribute(name: string): string | null {
    return this.attrs.get(name) ?? null;
  }

  removeAttribute(name: string): void {
    this.attrs.delete(name);
  }

  addEventListener(type: string, fn: Listener): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), fn]);
  }

  click(): void {
    if (this.disabled) {
      return;
    }
    const ev = { preventDefault() {}, stopPropagation() {} };
    for (const fn of this.listeners.get('click') ?? []) {
      fn(ev);
    }
  }

  appendChild<T extends MiniNode>(node: T): T {
    node.parentNode?.removeChild(node);
    node.parentNode = this;
    this.childNodes.push(node);
    return node;
  }

  append(...nodes: (MiniNode | string)[]): void {
    for (const node of nodes) {
      this.appendChild(typeof node === 'string' ? new MiniText(node) : node);
    }
  }

  insertBefore<T extends MiniNode>(node: T, ref: MiniNode | null): T {
    if (ref === null) {
      return this.appendChild(node);
    }
    node.parentNode?.removeChild(node);
    node.parentNode = this;
    this.childNodes.splice(this.childNodes.indexOf(ref), 0, node);
    return node;
  }

  removeChild<T extends MiniNode>(node: T): T {
    const i = this.childNodes.indexOf(node);
    if (i >= 0) {
      this.childNodes.splice(i, 1);
      node.parentNode = null;
    }
    return node;
  }

  /** Every element below (depth first). */
  all(): MiniElement[] {
    const out: MiniElement[] = [];
    const walk = (node: MiniNode) => {
      for (const child of node.childNodes) {
        if (child instanceof MiniElement) {
          out.push(child);
          walk(child);
        }
      }
    };
    walk(this);
    return out;
  }

  /** Supports `tag`, `.class` and `.class tag` (what the views use). */
  querySelectorAll(selector: string): MiniElement[] {
    const parts = selector.trim().split(/\s+/);
    const match = (el: MiniElement, part: string) => part.startsWith('.')
      ? el.className.split(/\s+/).includes(part.slice(1))
      : el.tagName === part.toUpperCase();
    let scope: MiniElement[] = this.all().filter(el => match(el, parts[0]));
    for (const part of parts.slice(1)) {
      scope = [...new Set(scope.flatMap(el => el.all().filter(d => match(d, part))))];
    }
    return scope;
  }

  querySelector(selector: string): MiniElement | null {
    return this.querySelectorAll(selector)[0] ?? null;
  }

  /** Elements with this `data-testid`. */
  byTestId(id: string): MiniElement[] {
    return this.all().filter(el => el.attrs.get('data-testid') === id);
  }
}

function toKebab(key: string): string {
  return key.replace(/[A-Z]/g, c => `-${c.toLowerCase()}`);
}

/** Install a `document` that makes MiniElements (call the returned function to remove it). */
export function installMiniDom(): () => void {
  const g = globalThis as any;
  const previous = g.document;
  g.document = {
    createElement: (tag: string) => new MiniElement(tag),
    createTextNode: (text: string) => new MiniText(text)
  };
  return () => {
    g.document = previous;
  };
}
