// Which headers cross the gateway, in each direction. Allow-lists: anything not named stays behind.

/** Client headers forwarded upstream. Never authorization, cookies or forwarding headers. */
const FROM_CLIENT = ['accept', 'openai-beta'] as const;

/**
 * Upstream headers returned to the client. Not openai-organization (it names the company's OpenAI
 * account), not x-ratelimit-* (they describe the shared server key, not the client's key), not
 * set-cookie. Upstream's request id comes back as x-upstream-request-id: x-request-id is the gateway's.
 * x-should-retry passes: upstream saying another attempt cannot help is what keeps the client's SDK
 * from retrying (the gateway already believed it and did not retry).
 */
const FROM_UPSTREAM = [
  'content-type',
  'openai-processing-ms',
  'openai-version',
  'openai-model',
  'retry-after',
  'retry-after-ms',
  'x-should-retry',
] as const;

export function clientHeadersForUpstream(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of FROM_CLIENT) {
    const v = headers[name];
    if (typeof v === 'string') out[name] = v;
  }
  return out;
}

export function upstreamHeadersForClient(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of FROM_UPSTREAM) {
    const v = headers[name];
    if (typeof v === 'string') out[name] = v;
  }
  const id = headers['x-request-id'];
  if (typeof id === 'string') out['x-upstream-request-id'] = id;
  return out;
}
