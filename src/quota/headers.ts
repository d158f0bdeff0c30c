// OpenAI's x-ratelimit-* headers, from the rolling-window state the admission returned.
import type { AdmissionResult, WindowState } from '../store/store.js';

/** OpenAI's duration style: `20ms`, `1.5s`, `6m0s`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.ceil(ms))}ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${Number(seconds.toFixed(3))}s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}m${Math.round(seconds - minutes * 60)}s`;
}

function windowHeaders(kind: 'requests' | 'tokens', w: WindowState | undefined, out: Record<string, string>) {
  if (!w) return;
  out[`x-ratelimit-limit-${kind}`] = String(w.limit);
  out[`x-ratelimit-remaining-${kind}`] = String(Math.max(0, w.remaining));
  out[`x-ratelimit-reset-${kind}`] = formatDuration(w.resetMs);
}

export function rateLimitHeaders(result: AdmissionResult): Record<string, string> {
  const out: Record<string, string> = {};
  windowHeaders('requests', result.requests, out);
  windowHeaders('tokens', result.tokens, out);
  return out;
}
