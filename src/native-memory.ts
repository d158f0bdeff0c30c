// Gives the native memory glibc keeps after it is freed back to the OS, on a timer (issue 7: <= 150 MB
// of RSS with 1,000 open streams).
//
// Why: in the first seconds of load V8's compiler threads allocate and free hundreds of MB of
// short-lived zones. glibc returns freed memory to the OS only from the top of a heap, so in some
// runs ~30 MB of freed, fragmented pages stayed resident for good, and 1,000 open streams then
// peaked at 150-165 MB instead of 138-143 MB. malloc_trim(0) releases those pages too: with it once a
// second, 17 of 17 bench runs peaked at 138-144 MB (2 of 16 over 150 MB without), and CPU per
// request moved by less than the noise (BENCHMARKS.md). Node cannot call it without native
// code, hence the small addon in native/malloc_trim.c, built by `npm install` (node-gyp). Without it
// (no compiler at install, or a C library other than glibc) Tollgate runs the same, without trims.
import { createRequire } from 'node:module';

interface MallocTrimAddon {
  /** malloc_trim(0); true when memory was released. Absent where the C library is not glibc. */
  trim?: () => boolean;
}

/** Where `npm install` builds the addon, from src/ (tests) and from dist/ alike. */
const ADDON_PATH = '../build/Release/malloc_trim.node';

type AddonLoad = { addon: MallocTrimAddon } | { addon: null; failure: 'addon not built' | 'addon failed to load' };

/** Loads the addon at `path` (relative to this module), or says why it could not. */
export function loadAddon(path: string): AddonLoad {
  try {
    return { addon: createRequire(import.meta.url)(path) as MallocTrimAddon };
  } catch (err) {
    // Not built is expected (no compiler at install); a built file that will not load (built for
    // another Node ABI or architecture, a copied-in build/) is worth telling apart in the log.
    const notBuilt = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND';
    return { addon: null, failure: notBuilt ? 'addon not built' : 'addon failed to load' };
  }
}

let load: AddonLoad | undefined;
const addonLoad = (): AddonLoad => (load ??= loadAddon(ADDON_PATH));

/** The addon, loaded once; null when it was not built or cannot load here. */
export function mallocTrimAddon(): MallocTrimAddon | null {
  return addonLoad().addon;
}

type NotTrimmingReason = 'disabled' | 'addon not built' | 'addon failed to load' | 'not glibc';

export type MemoryTrimStatus = { trimming: true; intervalMs: number } | { trimming: false; reason: NotTrimmingReason };

export interface MemoryTrimmer {
  status: MemoryTrimStatus;
  stop(): void;
}

/**
 * Calls malloc_trim(0) every `intervalMs` (0: never). A call blocks the event loop for 0.1-0.5 ms
 * (measured under load, ~100 MB resident); the timer is unref'd, so it never holds the process open.
 */
export function startMemoryTrimmer(intervalMs: number): MemoryTrimmer {
  const stopped = (reason: NotTrimmingReason): MemoryTrimmer => ({
    status: { trimming: false, reason },
    stop() {},
  });
  if (intervalMs <= 0) return stopped('disabled');
  const loaded = addonLoad();
  if (loaded.addon === null) return stopped(loaded.failure);
  const trim = loaded.addon.trim;
  if (!trim) return stopped('not glibc');
  const timer = setInterval(trim, intervalMs);
  timer.unref();
  return { status: { trimming: true, intervalMs }, stop: () => clearInterval(timer) };
}
