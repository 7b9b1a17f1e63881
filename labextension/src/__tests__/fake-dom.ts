/**
 * A minimal stand-in for `document` for DOM-building code under vitest's node environment:
 * it records the element tree and refuses `innerHTML`, so tests can assert that untrusted
 * text arrives as text nodes.
 */

export class FakeText {
  constructor(public data: string) {}
  get textContent(): string {
    return this.data;
  }
}

export class FakeElement {
  attributes = new Map<string, string>();
  children: (FakeElement | FakeText)[] = [];
  className = '';
  title = '';
  tabIndex = -1;
  style: Record<string, string> = {};
  listeners = new Map<string, ((event: any) => void)[]>();
  constructor(
    public tagName: string,
    public namespaceURI: string | null
  ) {}
  setAttribute(name: string, value: string): void {
    this.attributes.set(name, String(value));
  }
  getAttribute(name: string): string | null {
    return this.attributes.get(name) ?? null;
  }
  appendChild<T extends FakeElement | FakeText>(child: T): T {
    this.children.push(child);
    return child;
  }
  addEventListener(type: string, fn: (event: any) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), fn]);
  }
  dispatch(type: string, event: any = {}): void {
    for (const fn of this.listeners.get(type) ?? []) {
      fn(event);
    }
  }
  get textContent(): string {
    return this.children.map(c => c.textContent).join('');
  }
  set textContent(value: string) {
    this.children = [new FakeText(value)];
  }
  set innerHTML(_: string) {
    throw new Error('innerHTML must not be used');
  }
  /** Every descendant with this tag name, in document order. */
  all(tag: string): FakeElement[] {
    const out: FakeElement[] = [];
    for (const child of this.children) {
      if (child instanceof FakeElement) {
        if (child.tagName === tag) {
          out.push(child);
        }
        out.push(...child.all(tag));
      }
    }
    return out;
  }
}

export const fakeDocument = {
  createElementNS: (ns: string, tag: string) => new FakeElement(tag, ns),
  createElement: (tag: string) => new FakeElement(tag, null),
  createTextNode: (data: string) => new FakeText(data)
};

/** Install `fakeDocument` as the global `document`; returns the function that restores it. */
export function installFakeDocument(): () => void {
  const saved = (globalThis as any).document;
  (globalThis as any).document = fakeDocument;
  return () => {
    (globalThis as any).document = saved;
  };
}
