// The usage event: one per /v1 request (hits, misses, errors and rejections), the unit of accounting.

export interface UsageEvent {
  /** Epoch ms when the request arrived. */
  ts: number;
  /** Unique per request, minted by the gateway (requestId may be the client's and repeat). */
  eventId: string;
  requestId: string;
  /** Null when the request was refused before a key was known (401). */
  keyId: string | null;
  keyName: string | null;
  /** Endpoint table name (chat.completions, completions, embeddings, models.list...), null if unmatched. */
  endpoint: string | null;
  /** The model the client asked for, and the one upstream says answered (a dated snapshot, say). */
  model: string | null;
  modelAnswered: string | null;
  status: number;
  stream: boolean;
  cache: 'HIT' | 'MISS' | 'BYPASS' | null;
  /** Tokens billed by upstream for this request (0 for hits and for requests that never reached it). */
  promptTokens: number;
  cachedPromptTokens: number;
  completionTokens: number;
  reasoningTokens: number;
  totalTokens: number;
  /** What it cost, integer micro-dollars. */
  costMicros: number;
  /** For hits: the tokens and cost of the original call, which this request did not spend again. */
  savedTokens: number;
  savedMicros: number;
  /** The counts are the gateway's own (a stream cut short), not upstream's. */
  estimated: boolean;
  /** Arrival to last byte. */
  latencyMs: number;
  /** Arrival to the first byte written to the client; null if nothing was written. */
  ttfbMs: number | null;
  /** Sending upstream to its last byte; null when upstream was not called. */
  upstreamMs: number | null;
  /** The gateway's own share: latency minus upstream time. */
  overheadMs: number;
  /** OpenAI-style error code of a refused or failed request (invalid_api_key, insufficient_quota...). */
  errorCode: string | null;
}
