// The upstream pool's connections, shared fairly among the gateway keys waiting for one.
//
// All keys share UPSTREAM_MAX_CONNECTIONS connections to OpenAI. When they are all busy, undici
// queues further requests first come, first served: an app that sends 400 slow requests at once
// put every other app's next request behind all 400 of them. Here, a request waits for a
// connection in its key's own queue, and each connection that frees goes to the waiting key with
// the fewest requests upstream at that moment. Nothing is refused and nothing is reserved: a key
// alone may use every connection, and a busy key only waits behind keys that hold fewer.

/** Ends one request's hold on a connection. Safe to call more than once. */
export type Release = () => void;

interface Waiter {
  grant: (release: Release) => void;
  /** When it started waiting: among keys holding the same number, the longest wait goes first. */
  since: number;
}

interface Tenant {
  id: string;
  /** Requests of this key holding a connection now. */
  held: number;
  waiting: Waiter[];
}

export interface FairShare {
  /**
   * A connection for `tenant`'s next request: at once when one is free and nobody waits, else when
   * its turn comes. Rejects with the signal's reason if it aborts while waiting (the place in the
   * queue is given up).
   */
  acquire(tenant: string, signal?: AbortSignal): Release | Promise<Release>;
  /** Requests holding a connection, and requests waiting for one. */
  stats(): { held: number; waiting: number };
}

export function createFairShare(connections: number): FairShare {
  const tenants = new Map<string, Tenant>();
  let held = 0;
  let waiting = 0;
  let arrivals = 0;

  function take(tenant: Tenant): Release {
    held++;
    tenant.held++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      held--;
      tenant.held--;
      forgetIfIdle(tenant);
      handOn();
    };
  }

  /** Gives free connections to the waiting key that holds the fewest. */
  function handOn(): void {
    while (held < connections && waiting > 0) {
      let next: Tenant | undefined;
      for (const tenant of tenants.values()) {
        if (tenant.waiting.length === 0) continue;
        if (!next || tenant.held < next.held || (tenant.held === next.held && tenant.waiting[0]!.since < next.waiting[0]!.since)) {
          next = tenant;
        }
      }
      const waiter = next!.waiting.shift()!;
      waiting--;
      waiter.grant(take(next!));
    }
  }

  /** The map holds only keys with requests holding or waiting. */
  function forgetIfIdle(tenant: Tenant): void {
    if (tenant.held === 0 && tenant.waiting.length === 0) tenants.delete(tenant.id);
  }

  function acquire(id: string, signal?: AbortSignal): Release | Promise<Release> {
    let tenant = tenants.get(id);
    if (!tenant) tenants.set(id, (tenant = { id, held: 0, waiting: [] }));
    if (held < connections && waiting === 0) return take(tenant);
    if (signal?.aborted) {
      forgetIfIdle(tenant);
      throw signal.reason;
    }
    const queue = tenant.waiting;
    return new Promise<Release>((resolve, reject) => {
      const onAbort = () => {
        const i = queue.indexOf(waiter);
        if (i < 0) return;
        queue.splice(i, 1);
        waiting--;
        forgetIfIdle(tenant);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        since: arrivals++,
        grant: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      queue.push(waiter);
      waiting++;
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  return { acquire, stats: () => ({ held, waiting }) };
}
