// A warning that repeats while a degraded mode lasts, written at most once per interval with the
// number of occurrences left out, so an outage under load does not flood the log.

export interface WarnLogger {
  warn(obj: object, msg?: string): void;
}

export class ThrottledWarning {
  #lastAt = -Infinity;
  #suppressed = 0;

  constructor(
    private readonly logger: WarnLogger,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  warn(obj: object, msg: string) {
    const t = this.now();
    if (t - this.#lastAt < this.intervalMs) {
      this.#suppressed++;
      return;
    }
    this.logger.warn({ ...obj, suppressed: this.#suppressed }, msg);
    this.#lastAt = t;
    this.#suppressed = 0;
  }
}
