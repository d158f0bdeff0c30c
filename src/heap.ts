// V8 heap sizing for a gateway that holds thousands of open streams (issue 7: <= 150 MB of RSS with
// 1,000 concurrent slow streams).
//
// Why flags at all: each open stream keeps ~30 KB of live heap (sockets, Node's and undici's HTTP
// objects, Fastify's request and reply, the relay), so 1,000 streams are ~30 MB live on a ~20 MB
// base. With V8's defaults the process peaked at ~190-230 MB: the young generation grows to 2 x 16 MB
// and stays there, and the old generation is let grow to up to 4x its live size before a full
// collection (objects of a 4 s stream are all promoted, then die there). Measured with the bench's
// rss scenario (1,000 streams, 300 ms between events), peak RSS: V8 defaults 187-227 MB; old
// generation growth capped at 15%: 175-183 MB; plus 8 MB semi-spaces: 162-168 MB; plus 4 MB
// semi-spaces: 149-154 MB; plus survivors copied rather than whole young pages promoted
// (--no-page-promotion: a denser old generation, no GC time difference measured): 145-148 MB.
//
// What it costs, in CPU time per request (50 concurrent requests to a fast fake upstream, 3
// interleaved rounds; non-streamed / streamed): V8 defaults 558-594 / 682-742 us; the 15% growth
// cap alone the same (592-594 / 682-742 us); with 8 MB semi-spaces 710-858 / 778-953 us; with 4 MB
// semi-spaces 708-731 / 1002-1080 us (main-thread GC 108-117 / 189-208 us instead of 42-52: more
// objects survive a smaller young generation), i.e. ~25% / ~45% more. With 1,000 slow streams GC
// is a smaller share (~5% more CPU per stream). So the young generation is the trade: the 4 MB
// default meets the memory target; V8_MAX_SEMI_SPACE_MB=0 gives the CPU back for ~30 MB more at
// the peak. V8 flags given at start-up always win (--heap-growing-percent only on the command line:
// Node refuses it in NODE_OPTIONS).
//
// How: --heap-growing-percent can be set at run time. The semi-space size cannot (V8 fixes its
// maximum when the heap is created, before any JS runs, and Node reads NODE_OPTIONS only then), but
// --semi-space-growth-factor is read each time V8 grows the young generation: held at 1 while the
// modules load (importing this module first), then the young generation is grown once to the
// wanted size, synchronously, and held there; after each GC a check lets it grow back to that size
// if V8 shrank it (as it does when idle). If that check runs late (several GCs in one event-loop
// turn), one more doubling can slip through: at worst 2x the setting (V8's 16 MB maximum still holds).
// That is V8 11 and 12 (Node 20, 22). V8 13 and later (Node 24+) also grow the young generation in
// steps of their own (~1-2 MB) with the growth factor at 1, so there it is held near the setting, not
// at it: 8-17 MB for 4 MB under sustained allocation, against 64 MB with their own sizing (2 x 32 MB).
// For an exact bound there, start Node with --max-semi-space-size=N (NODE_OPTIONS works too).
import v8 from 'node:v8';
import { PerformanceObserver } from 'node:perf_hooks';

export interface HeapSettings {
  /** Semi-space size the young generation is held at, in MB (it has two); 0: V8's own sizing. */
  maxSemiSpaceMb: number;
  /** Old-generation growth between full GCs, in percent of its live size; 0: V8's own (dynamic, up to 300%). */
  growingPercent: number;
}

export interface HeapTuning {
  /** What applies: a number we set, 'v8' (V8's default), or 'operator' (a V8 flag given at start-up). */
  semiSpaceMb: number | 'v8' | 'operator';
  growingPercent: number | 'v8' | 'operator';
  /** The young generation's size once set up (both semi-spaces), in bytes. */
  youngGenerationBytes: number;
}

/** V8 flags given at start-up (command line or NODE_OPTIONS), normalised to dashes. */
function startupFlags(): string[] {
  const args = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return args.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]!.replaceAll('_', '-'));
}

/** Whether the operator set any of these V8 flags at start-up. */
export function setAtStartup(...flags: string[]): boolean {
  const given = startupFlags();
  return flags.some((f) => given.includes(f));
}

const YOUNG_FLAGS = ['--max-semi-space-size', '--min-semi-space-size', '--semi-space-growth-factor', '--max-heap-size'];
const youngByOperator = setAtStartup(...YOUNG_FLAGS);

let growthFactor = 2; // V8's default
function setGrowthFactor(factor: number): void {
  if (factor === growthFactor) return;
  v8.setFlagsFromString(`--semi-space-growth-factor=${factor}`);
  growthFactor = factor;
}

/** Bytes of the young generation (both semi-spaces), as V8 reports it. */
export function youngGenerationBytes(): number {
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0;
}

// While the modules load (this module is imported first), the young generation stays at its initial
// size (1 MB semi-spaces): loading promotes ~20 MB of long-lived objects and would otherwise grow
// it to V8's maximum before configureHeap runs, and it does not shrink on demand.
if (!youngByOperator) setGrowthFactor(1);

let observer: PerformanceObserver | undefined;

/**
 * Applies the settings: call once, at start-up, before serving. Returns what applies, for the log.
 */
export function configureHeap(settings: HeapSettings): HeapTuning {
  let growingPercent: HeapTuning['growingPercent'] = 'v8';
  if (setAtStartup('--heap-growing-percent')) growingPercent = 'operator';
  else if (settings.growingPercent > 0) {
    v8.setFlagsFromString(`--heap-growing-percent=${settings.growingPercent}`);
    growingPercent = settings.growingPercent;
  }

  let semiSpaceMb: HeapTuning['semiSpaceMb'] = 'v8';
  if (youngByOperator) semiSpaceMb = 'operator';
  else if (settings.maxSemiSpaceMb <= 0) setGrowthFactor(2);
  else {
    holdYoungGeneration(settings.maxSemiSpaceMb * 2 * 1024 * 1024);
    semiSpaceMb = settings.maxSemiSpaceMb;
    if (!setAtStartup('--page-promotion', '--no-page-promotion')) v8.setFlagsFromString('--no-page-promotion');
  }
  return { semiSpaceMb, growingPercent, youngGenerationBytes: youngGenerationBytes() };
}

/** Grows the young generation to `target` bytes now, then keeps it there (see the top of the file). */
function holdYoungGeneration(target: number): void {
  growYoungGeneration(target);
  observer?.disconnect();
  observer = new PerformanceObserver(() => setGrowthFactor(youngGenerationBytes() < target ? 2 : 1));
  observer.observe({ entryTypes: ['gc'] });
}

/**
 * V8 grows the young generation when more than one semi-space's worth survived scavenges since it
 * last grew. So: allow one growth step of the right factor and keep small objects alive until it
 * happens, checking after each batch (~16 KB, far less than a semi-space, so at most one scavenge
 * runs in between), then hold. ~25 ms and a few MB of short-lived objects, once. Gives up if V8
 * stops growing it (its own maximum is lower than the setting).
 */
function growYoungGeneration(target: number): void {
  const keep: number[][][] = [];
  let size = youngGenerationBytes();
  let keptSinceGrowth = 0;
  while (size < target && keptSinceGrowth < 3 * size) {
    setGrowthFactor(Math.max(2, Math.ceil(target / size)));
    const batch: number[][] = new Array(256);
    for (let i = 0; i < 256; i++) batch[i] = [i];
    keep.push(batch);
    keptSinceGrowth += 16_384;
    const now = youngGenerationBytes();
    if (now !== size) keptSinceGrowth = 0;
    size = now;
  }
  setGrowthFactor(size < target ? 2 : 1);
}
