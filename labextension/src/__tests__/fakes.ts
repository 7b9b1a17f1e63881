/** Test doubles shared by the specs: a scripted WebSocket, storage and a clock run by hand. */

import type { IFrame, IWebSocketLike } from '../channel';

export class FakeSocket implements IWebSocketLike {
  readyState = 0;
  sent: any[] = [];
  closed: number | null = null;
  onopen: ((ev: any) => void) | null = null;
  onclose: ((ev: { code: number }) => void) | null = null;
  onerror: ((ev: any) => void) | null = null;
  onmessage: ((ev: { data: any }) => void) | null = null;
  constructor(readonly url: string) {}
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000): void {
    this.closed = code;
    this.readyState = 3;
  }
  welcome(sessionId: string, resumed: boolean, lastSeq = 0): void {
    this.readyState = 1;
    this.push({
      type: 'welcome',
      payload: { session_id: sessionId, resumed, last_seq: lastSeq, heartbeat_s: 30 }
    });
  }
  push(frame: IFrame): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006): void {
    this.readyState = 3;
    this.onclose?.({ code });
  }
  /** The last request frame of a kind. */
  request(kind: string): any {
    const found = [...this.sent].reverse().find(f => f.type === 'request' && f.payload.kind === kind);
    if (!found) {
      throw new Error(`no ${kind} request sent`);
    }
    return found;
  }
}

export class MemoryStorage {
  items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

/** Let pending promise callbacks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) {
    await Promise.resolve();
  }
}

/** Timers run by hand: `advance(ms)` fires what is due, in order. */
export class Clock {
  constructor(public now = 0) {}
  timers: { at: number; fn: () => void; id: number }[] = [];
  next = 0;
  setTimeout = (fn: () => void, ms: number): number => {
    const id = ++this.next;
    this.timers.push({ at: this.now + ms, fn, id });
    return id;
  };
  clearTimeout = (id: number): void => {
    this.timers = this.timers.filter(t => t.id !== id);
  };
  advance(ms: number): void {
    const until = this.now + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const due = this.timers[0];
      if (!due || due.at > until) {
        break;
      }
      this.timers.shift();
      this.now = due.at;
      due.fn();
    }
    this.now = until;
  }
}
