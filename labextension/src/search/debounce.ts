/**
 * A trailing-edge debouncer with injectable timers (so it is unit-tested without a clock).
 */

export interface ITimers {
  setTimeout: (fn: () => void, ms: number) => any;
  clearTimeout: (handle: any) => void;
}

const defaultTimers: ITimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: handle => clearTimeout(handle)
};

/** Runs `fn` once, `delayMs` after the last `schedule()`; `flush()` runs it now. */
export class Debouncer {
  constructor(
    private readonly _fn: () => void,
    private readonly _delayMs: number,
    private readonly _timers: ITimers = defaultTimers
  ) {}

  /** True while a run is scheduled. */
  get pending(): boolean {
    return this._handle !== null;
  }

  schedule(): void {
    this.cancel();
    this._handle = this._timers.setTimeout(() => {
      this._handle = null;
      this._fn();
    }, this._delayMs);
  }

  /** Run now if a run was scheduled; otherwise do nothing. */
  flush(): void {
    if (this._handle !== null) {
      this.cancel();
      this._fn();
    }
  }

  cancel(): void {
    if (this._handle !== null) {
      this._timers.clearTimeout(this._handle);
      this._handle = null;
    }
  }

  private _handle: any = null;
}
