/**
 * Turns running in this tab, remembered in sessionStorage so that a reloaded page can find
 * them again: for each, the seq of its `turn.started` frame. The reloaded page asks the
 * session channel to replay from just before the oldest one (`SessionChannel.replayFrom`)
 * and rebuilds the turns from their frames.
 */

import type { IContextItem } from './types';

export interface IInflightTurn {
  turnId: string;
  conversationId: string;
  /** The seq of the turn's `turn.started` frame. */
  seq: number;
  /** The channel session the seq belongs to. */
  sessionId: string | null;
  text: string;
  context: IContextItem[];
  task: string | null;
  /** When it was recorded (ms since the epoch). */
  at: number;
}

type StorageLike = Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>;

/** Kept at most (the oldest are dropped first). */
const MAX_TURNS = 20;
/** A turn older than this is not running any more (the server's turn limit is far lower). */
const MAX_AGE_MS = 6 * 3600 * 1000;
/** Characters of the user's message kept. */
const MAX_TEXT = 4000;

export class InflightStore {
  constructor(
    storage: StorageLike | null = safeSessionStorage(),
    key = 'jupyter-cloudide:chat-inflight',
    now: () => number = Date.now
  ) {
    this._storage = storage;
    this._key = key;
    this._now = now;
  }

  /** The remembered turns of `sessionId`, oldest first (others are forgotten). */
  list(sessionId?: string | null): IInflightTurn[] {
    const cutoff = this._now() - MAX_AGE_MS;
    const stored = this._read();
    const all = stored.filter(t => t.at >= cutoff);
    const kept = sessionId === undefined ? all : all.filter(t => t.sessionId === sessionId);
    if (kept.length !== stored.length) {
      this._write(kept);
    }
    return kept.sort((a, b) => a.seq - b.seq);
  }

  /** The seq to replay from (just before the oldest turn), or null. */
  replayPoint(sessionId: string | null): number | null {
    const turns = this.list(sessionId);
    return turns.length ? Math.max(0, turns[0].seq - 1) : null;
  }

  add(turn: Omit<IInflightTurn, 'at'>): void {
    const turns = this._read().filter(t => t.turnId !== turn.turnId);
    // what the reloaded page shows until the conversation loads: kept small
    const context = turn.context.map(({ text, ...rest }) => rest);
    turns.push({ ...turn, text: turn.text.slice(0, MAX_TEXT), context, at: this._now() });
    this._write(turns.slice(-MAX_TURNS));
  }

  remove(turnId: string): void {
    const turns = this._read();
    const kept = turns.filter(t => t.turnId !== turnId);
    if (kept.length !== turns.length) {
      this._write(kept);
    }
  }

  /** The conversation this tab showed last (reopened after a reload). */
  current(): string | null {
    try {
      return this._storage?.getItem(`${this._key}:current`) ?? null;
    } catch {
      return null;
    }
  }

  setCurrent(id: string | null): void {
    try {
      if (id) {
        this._storage?.setItem(`${this._key}:current`, id);
      } else {
        this._storage?.removeItem(`${this._key}:current`);
      }
    } catch {
      /* not remembered */
    }
  }

  clear(): void {
    try {
      this._storage?.removeItem(this._key);
    } catch {
      /* nothing to do */
    }
  }

  private _read(): IInflightTurn[] {
    try {
      const raw = this._storage?.getItem(this._key);
      const parsed = raw ? JSON.parse(raw) : [];
      return Array.isArray(parsed) ? parsed.filter(isInflight) : [];
    } catch {
      return [];
    }
  }

  private _write(turns: IInflightTurn[]): void {
    try {
      if (turns.length) {
        this._storage?.setItem(this._key, JSON.stringify(turns));
      } else {
        this._storage?.removeItem(this._key);
      }
    } catch {
      /* storage full or denied: a reload will not rebuild running turns */
    }
  }

  private _storage: StorageLike | null;
  private _key: string;
  private _now: () => number;
}

function isInflight(value: any): value is IInflightTurn {
  return (
    typeof value === 'object' && value !== null &&
    typeof value.turnId === 'string' && typeof value.conversationId === 'string' &&
    Number.isInteger(value.seq) && value.seq > 0 && typeof value.at === 'number' &&
    typeof value.text === 'string' && Array.isArray(value.context)
  );
}

function safeSessionStorage(): Storage | null {
  try {
    return typeof sessionStorage === 'undefined' ? null : sessionStorage;
  } catch {
    return null;
  }
}
