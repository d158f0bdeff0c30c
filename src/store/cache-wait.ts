// cacheWait's waiters, grouped by cache name: one poll timer and one check at a time per name.
// Shared by the memory and Redis stores so they behave alike.
import { cacheNameParts } from './redis-keys.js';

/** How often a waiter's store is asked whether the leader it waits on is gone (lock lapsed, release missed). */
export const CACHE_WAIT_POLL_MS = 250;
/** setTimeout fires at once beyond this (about 24.8 days), so longer waits are capped to it. */
const MAX_TIMER_MS = 2 ** 31 - 1;

type CacheWaitOutcome = 'filled' | 'failed' | 'timeout';

interface CacheWaitGroup {
  waiters: Set<{ resolve: (outcome: CacheWaitOutcome) => void; timer: NodeJS.Timeout }>;
  poll: NodeJS.Timeout;
  /** A check is in flight: the next tick skips rather than piling up behind a slow store. */
  checking: boolean;
}

/**
 * The waiters of `cacheWait`, grouped by cache name, shared by both stores so they behave alike:
 * however many wait on one name, there is one poll timer and one check at a time for it. A group
 * ends when a release is heard (`settle`), when a check finds the outcome, or when its last waiter
 * times out; every timer goes with it. Never rejects: a check that throws just means "ask again".
 */
export class CacheWaitList {
  readonly #groups = new Map<string, CacheWaitGroup>();
  #closed = false;

  /**
   * @param check the leader's outcome if it is over (no lock any more: 'filled' if an entry exists,
   * else 'failed'), or null while the lock is still held.
   */
  constructor(
    private readonly check: (name: string) => Promise<'filled' | 'failed' | null>,
    private readonly pollMs = CACHE_WAIT_POLL_MS,
  ) {}

  wait(name: string, timeoutMs: number): Promise<CacheWaitOutcome> {
    try {
      cacheNameParts(name);
    } catch {
      return Promise.resolve('failed'); // a name no leader can hold
    }
    if (this.#closed) return Promise.resolve('failed');
    const ms = Math.min(Math.max(0, Number.isNaN(timeoutMs) ? 0 : timeoutMs), MAX_TIMER_MS);
    return new Promise((resolve) => {
      let group = this.#groups.get(name);
      const isNew = group === undefined;
      if (!group) {
        const created: CacheWaitGroup = { waiters: new Set(), poll: setInterval(() => void this.#check(name, created), this.pollMs), checking: false };
        group = created;
        this.#groups.set(name, group);
      }
      const joined = group;
      const waiter = {
        resolve,
        timer: setTimeout(() => {
          joined.waiters.delete(waiter);
          if (joined.waiters.size === 0) this.#end(name, joined);
          resolve('timeout');
        }, ms),
      };
      joined.waiters.add(waiter);
      // The leader may be done already (it released before we began to listen): ask at once.
      if (isNew) void this.#check(name, joined);
    });
  }

  /** The leader of `name` released: wakes everyone waiting on it. */
  settle(name: string, outcome: 'filled' | 'failed') {
    const group = this.#groups.get(name);
    if (!group) return;
    this.#end(name, group);
    for (const waiter of group.waiters) {
      clearTimeout(waiter.timer);
      waiter.resolve(outcome);
    }
  }

  /** Checks every name now, e.g. after the release feed reconnected and may have missed messages. */
  checkAll() {
    for (const [name, group] of this.#groups) void this.#check(name, group);
  }

  /** The store is closing: nobody will release to its waiters any more, so they are told 'failed'. */
  close() {
    this.#closed = true;
    for (const name of [...this.#groups.keys()]) this.settle(name, 'failed');
  }

  async #check(name: string, group: CacheWaitGroup) {
    if (group.checking) return;
    group.checking = true;
    try {
      const outcome = await this.check(name);
      // Only for the group that asked: it may have ended meanwhile, and a new one begun.
      if (outcome !== null && this.#groups.get(name) === group) this.settle(name, outcome);
    } catch {
      // The store did not answer: keep waiting, for a release, a later check or the timeout.
    } finally {
      group.checking = false;
    }
  }

  #end(name: string, group: CacheWaitGroup) {
    clearInterval(group.poll);
    if (this.#groups.get(name) === group) this.#groups.delete(name);
  }
}
