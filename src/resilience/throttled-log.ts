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

  /**
   * `logger`: where the line goes when it is written, e.g. the logger of the request that met the
   * problem (so the line carries its request id); the one given at construction by default.
   * Returns whether the line was written (false: left out, and counted).
   */
  warn(obj: object, msg: string, logger: WarnLogger = this.logger): boolean {
    const t = this.now();
    if (t - this.#lastAt < this.intervalMs) {
      this.#suppressed++;
      return false;
    }
    logger.warn({ ...obj, suppressed: this.#suppressed }, msg);
    this.#lastAt = t;
    this.#suppressed = 0;
    return true;
  }
}

/** A ThrottledWarning per key (an error code, a status): distinct problems never hide each other. */
export class KeyedThrottledWarning {
  readonly #byKey = new Map<string, ThrottledWarning>();

  constructor(
    private readonly logger: WarnLogger,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  warn(key: string, obj: object, msg: string, logger: WarnLogger = this.logger): boolean {
    let warning = this.#byKey.get(key);
    if (!warning) this.#byKey.set(key, (warning = new ThrottledWarning(this.logger, this.intervalMs, this.now)));
    return warning.warn(obj, msg, logger);
  }
}
