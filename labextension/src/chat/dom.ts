/**
 * A tiny DOM builder for the chat view. Everything it puts in the page is elements and
 * text nodes: strings become `Text` nodes, never HTML. (Model output reaches HTML only
 * through the sanitising Markdown renderer, see `markdown.ts`.)
 */

export type Child = Node | string | null | undefined | false;

export interface IAttrs {
  class?: string;
  testid?: string;
  title?: string;
  type?: string;
  disabled?: boolean;
  ariaLabel?: string;
  /** Other attributes, set with `setAttribute` (values are plain strings). */
  attrs?: Record<string, string>;
  onClick?: (ev: MouseEvent) => void;
}

/** Create an element with attributes and children (strings become text nodes). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: IAttrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.class) {
    el.className = props.class;
  }
  if (props.testid) {
    el.dataset.testid = props.testid;
  }
  if (props.title) {
    el.title = props.title;
  }
  if (props.ariaLabel) {
    el.setAttribute('aria-label', props.ariaLabel);
  }
  if (props.type) {
    el.setAttribute('type', props.type);
  }
  if (props.disabled) {
    (el as HTMLButtonElement).disabled = true;
  }
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    el.setAttribute(name, value);
  }
  if (props.onClick) {
    el.addEventListener('click', props.onClick as EventListener);
  }
  append(el, ...children);
  return el;
}

/** Append children; strings as text nodes. */
export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    parent.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
}

/** Replace all children. */
export function replaceChildren(parent: Element, ...children: Child[]): void {
  while (parent.firstChild) {
    parent.removeChild(parent.firstChild);
  }
  append(parent, ...children);
}

/** A small button with a label and test id. */
export function button(label: string, testid: string, onClick: () => void,
  options: { title?: string; class?: string; disabled?: boolean } = {}): HTMLButtonElement {
  return h('button', {
    class: `jp-cloudide-chat-button ${options.class ?? ''}`.trim(),
    testid,
    type: 'button',
    title: options.title,
    disabled: options.disabled,
    onClick: ev => {
      ev.preventDefault();
      ev.stopPropagation();
      onClick();
    }
  }, label);
}
