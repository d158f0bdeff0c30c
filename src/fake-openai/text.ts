// Deterministic text and vectors for the fake upstream: same input, same output. (Prompt tokens are
// counted with the gateway's real tokenizer, src/openai/tokens.ts; one reply word is one completion token.)

/** FNV-1a, 32 bits: a cheap stable hash so replies and vectors depend only on the request. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: a tiny seeded PRNG (Math.random would break "identical request, identical reply"). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function words(text: string): string[] {
  return text.split(/\s+/).filter((w) => w.length > 0);
}

const FILLER = [
  'the', 'gateway', 'forwards', 'each', 'request', 'upstream', 'and', 'counts', 'tokens', 'carefully',
  'while', 'budgets', 'limits', 'keep', 'spending', 'under', 'control', 'for', 'every', 'team',
  'so', 'that', 'nothing', 'surprising', 'happens', 'when', 'traffic', 'grows', 'quickly', 'today',
];

const ECHO_WORDS = 8;
const FILLER_WORDS = 12;

/**
 * The words of a fake reply. `variant` (the choice index) changes only the filler, so n>1 choices
 * differ from each other while staying deterministic. One word is one completion token.
 */
export function replyWords(prefix: string, seedText: string, variant: number): string[] {
  const echo = words(seedText).slice(0, ECHO_WORDS);
  const rand = seededRandom(hash32(`${seedText}\u0000${variant}`));
  const filler: string[] = [];
  for (let i = 0; i < FILLER_WORDS; i++) filler.push(FILLER[Math.floor(rand() * FILLER.length)] ?? 'filler');
  filler[filler.length - 1] += '.';
  return [...words(prefix), ...(echo.length > 0 ? echo : ['(empty)']), '-', ...filler];
}

/**
 * A unit-length vector derived from the input. Values are rounded to float32 so the `float` and
 * `base64` encodings of the same input decode to exactly the same numbers.
 */
export function embeddingVector(key: string, dimensions: number): number[] {
  const rand = seededRandom(hash32(key));
  const raw = Array.from({ length: dimensions }, () => rand() * 2 - 1);
  const norm = Math.sqrt(raw.reduce((sum, v) => sum + v * v, 0)) || 1;
  return raw.map((v) => Math.fround(v / norm));
}

/** Little-endian float32 bytes, base64: what OpenAI returns for encoding_format=base64. */
export function float32Base64(values: number[]): string {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return buf.toString('base64');
}
