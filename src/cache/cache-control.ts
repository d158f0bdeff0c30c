// The request directives of HTTP Cache-Control that the response cache honours.

export interface CacheControl {
  /** Do not answer from the cache; a fresh answer may still be stored. */
  noCache: boolean;
  /** Neither read nor write the cache. */
  noStore: boolean;
  /** Accept only entries younger than this. */
  maxAgeSeconds?: number;
}

export function parseCacheControl(header: string | string[] | undefined): CacheControl {
  const out: CacheControl = { noCache: false, noStore: false };
  const value = Array.isArray(header) ? header.join(',') : header;
  if (!value) return out;
  for (const part of value.split(',')) {
    const [rawName, rawArg] = part.split('=', 2);
    const name = rawName!.trim().toLowerCase();
    if (name === 'no-cache') out.noCache = true;
    else if (name === 'no-store') out.noStore = true;
    else if (name === 'max-age' && rawArg !== undefined) {
      const seconds = Number(rawArg.trim().replace(/^"|"$/g, ''));
      if (Number.isInteger(seconds) && seconds >= 0) out.maxAgeSeconds = seconds;
    }
  }
  return out;
}
