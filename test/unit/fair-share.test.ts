// The upstream pool's connections shared among the keys waiting for one (src/upstream/fair-share.ts).
import { describe, expect, it } from 'vitest';
import { createFairShare, type Release } from '../../src/upstream/fair-share.js';

/** Takes a connection for `tenant` and notes, in `order`, when it was granted. */
function ask(share: ReturnType<typeof createFairShare>, tenant: string, order: string[], signal?: AbortSignal) {
  const turn = share.acquire(tenant, signal);
  if (typeof turn === 'function') {
    order.push(tenant);
    return Promise.resolve(turn);
  }
  return turn.then((release) => {
    order.push(tenant);
    return release;
  });
}

describe('fair share of the upstream connections', () => {
  it('grants at once while a connection is free: one key alone may use them all', async () => {
    const share = createFairShare(3);
    const turns = [share.acquire('a'), share.acquire('a'), share.acquire('a')];
    expect(turns.every((t) => typeof t === 'function')).toBe(true);
    expect(share.stats()).toEqual({ held: 3, waiting: 0 });
    expect(share.acquire('a')).toBeInstanceOf(Promise);
    expect(share.stats()).toEqual({ held: 3, waiting: 1 });
  });

  it("gives each freed connection to the waiting key holding the fewest, not to the longest queue's head", async () => {
    const share = createFairShare(4);
    const order: string[] = [];
    // A busy key holds every connection and has ten more waiting when a quiet key asks for one.
    const heavyHeld = await Promise.all([1, 2, 3, 4].map(() => ask(share, 'heavy', order)));
    const heavyWaiting = Array.from({ length: 10 }, () => ask(share, 'heavy', order));
    const light = ask(share, 'light', order);
    order.length = 0;
    heavyHeld[0]!();
    const lightRelease = await light;
    expect(order).toEqual(['light']);
    // The next one goes to heavy (light holds 1, heavy 3, but only heavy waits).
    heavyHeld[1]!();
    await Promise.resolve();
    expect(order).toEqual(['light', 'heavy']);
    lightRelease();
    for (const r of heavyHeld.slice(2)) r();
    for (const waiting of heavyWaiting) (await waiting)();
    expect(share.stats()).toEqual({ held: 0, waiting: 0 });
  });

  it('between keys holding as many, serves the one waiting longest', async () => {
    const share = createFairShare(1);
    const order: string[] = [];
    const first = await ask(share, 'x', order);
    const b = ask(share, 'b', order);
    const a = ask(share, 'a', order);
    order.length = 0;
    first();
    (await b)();
    (await a)();
    expect(order).toEqual(['b', 'a']);
  });

  it('a wait given up by its signal rejects with its reason, and loses its place', async () => {
    const share = createFairShare(1);
    const order: string[] = [];
    const held = await ask(share, 'a', order);
    const gone = new AbortController();
    const leaving = ask(share, 'b', order, gone.signal);
    const staying = ask(share, 'c', order);
    gone.abort(new Error('client left'));
    await expect(leaving).rejects.toThrow('client left');
    expect(share.stats()).toEqual({ held: 1, waiting: 1 });
    held();
    (await staying)();
    expect(order).toEqual(['a', 'c']);
    // Already aborted: refused at once, nothing taken.
    const late = new AbortController();
    late.abort(new Error('gone already'));
    const busy = share.acquire('a') as Release;
    expect(() => share.acquire('d', late.signal)).toThrow('gone already');
    busy();
    expect(share.stats()).toEqual({ held: 0, waiting: 0 });
  });

  it('counts a release once, however often it is called', async () => {
    const share = createFairShare(1);
    const release = share.acquire('a') as Release;
    release();
    release();
    expect(share.stats()).toEqual({ held: 0, waiting: 0 });
    const again = share.acquire('a');
    expect(typeof again).toBe('function');
    expect(share.stats()).toEqual({ held: 1, waiting: 0 });
  });
});
