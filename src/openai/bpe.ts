// A compact byte-pair-encoding token counter over gpt-tokenizer's data, giving exactly its counts.
//
// Why not gpt-tokenizer's own encoders: each one keeps its rank table as a JS array of 200k strings
// plus a Map of them (o200k_base: ~18 MB of live heap), and building it means parsing a 2.4 MB
// JS array literal, which leaves another ~50 MB of RSS behind (parser zones, garbage the GC heap
// grew for and keeps). Here one encoding is three typed arrays: every token's bytes end to end,
// where each rank's bytes start, and an open-addressing hash table of ranks (o200k_base: 4.1 MB,
// off the GC heap), read from the package's own `.tiktoken` file (the source its JS tables are
// generated from) without one allocation per token.
//
// The counting is gpt-tokenizer 4's `countTokens(text, { disallowedSpecial: new Set() })`, step for
// step: the same pre-token regex, a pre-token that is one whole token counts 1, any other is
// byte-pair merged (lowest rank first, leftmost on ties) and counts its parts. Its lookup has two
// quirks that change counts, kept on purpose (test/unit/bpe.test.ts checks both encoders agree):
// - a byte range that is valid UTF-8 is looked up as its decoded string, and decoding drops one
//   leading byte-order mark (EF BB BF): "<BOM>using" finds the rank of "using";
// - a token whose bytes start with a BOM is never found (gpt-tokenizer files it under byte arrays,
//   which it searches only for invalid UTF-8).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { CL100K_TOKEN_SPLIT_REGEX, O200K_TOKEN_SPLIT_REGEX, R50K_TOKEN_SPLIT_REGEX } from 'gpt-tokenizer/encodingParams/constants';

export type BpeEncodingName = 'o200k_base' | 'cl100k_base' | 'p50k_base';

const SPLIT: Record<BpeEncodingName, RegExp> = {
  o200k_base: O200K_TOKEN_SPLIT_REGEX,
  cl100k_base: CL100K_TOKEN_SPLIT_REGEX,
  p50k_base: R50K_TOKEN_SPLIT_REGEX,
};

const require = createRequire(import.meta.url);

/** Where gpt-tokenizer keeps an encoding's ranks: one `base64(token) rank` line per token. */
export function tiktokenFile(name: BpeEncodingName): string {
  return require.resolve(`gpt-tokenizer/data/${name}.tiktoken`);
}

const NOT_FOUND = -1;
/** Rank of a pair that cannot merge (gpt-tokenizer: Infinity); above every real rank. */
const NO_MERGE = 0x7fffffff;
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

const BASE64 = new Int8Array(128).fill(-1);
for (const [i, c] of [...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'].entries()) BASE64[c.charCodeAt(0)] = i;

/**
 * Walks the `base64(token) rank` lines of a `.tiktoken` file (blank lines skipped): `pos` is where
 * the base64 starts, `space` where it ends. Both passes of the loader read the file this way.
 */
function forEachLine(data: Uint8Array, visit: (pos: number, space: number, rank: number) => void): void {
  for (let pos = 0; pos < data.length; ) {
    const space = data.indexOf(0x20, pos);
    let eol = data.indexOf(0x0a, pos);
    if (eol < 0) eol = data.length;
    if (eol === pos) {
      pos++;
      continue;
    }
    if (space < 0 || space > eol) throw new Error(`bad .tiktoken line at byte ${pos}`);
    let rank = 0;
    for (let i = space + 1; i < eol; i++) rank = rank * 10 + data[i]! - 0x30;
    visit(pos, space, rank);
    pos = eol + 1;
  }
}

/** gpt-tokenizer's `isValidUTF8` (utfUtil.ts), on `bytes[from, to)`. */
function isValidUtf8(bytes: Uint8Array, from: number, to: number): boolean {
  let i = from;
  while (i < to) {
    const byte1 = bytes[i]!;
    let numBytes: number;
    let codePoint: number;
    if (byte1 <= 0x7f) {
      i++;
      continue;
    } else if ((byte1 & 0xe0) === 0xc0) {
      if (byte1 <= 0xc1) return false;
      numBytes = 2;
      codePoint = byte1 & 0x1f;
    } else if ((byte1 & 0xf0) === 0xe0) {
      numBytes = 3;
      codePoint = byte1 & 0x0f;
    } else if ((byte1 & 0xf8) === 0xf0) {
      if (byte1 > 0xf4) return false;
      numBytes = 4;
      codePoint = byte1 & 0x07;
    } else return false;
    if (i + numBytes > to) return false;
    for (let j = 1; j < numBytes; j++) {
      const byte = bytes[i + j]!;
      if ((byte & 0xc0) !== 0x80) return false;
      codePoint = (codePoint << 6) | (byte & 0x3f);
    }
    if (numBytes === 2 && codePoint < 0x80) return false;
    if (numBytes === 3 && codePoint < 0x800) return false;
    if (numBytes === 4 && codePoint < 0x10000) return false;
    if (codePoint >= 0xd800 && codePoint <= 0xdfff) return false;
    if (codePoint > 0x10ffff) return false;
    i += numBytes;
  }
  return true;
}

const startsWithBom = (bytes: Uint8Array, from: number, to: number) =>
  to - from >= 3 && bytes[from] === 0xef && bytes[from + 1] === 0xbb && bytes[from + 2] === 0xbf;

export class BpeCounter {
  /** Every token's bytes, end to end, in rank order. */
  private readonly bytes: Uint8Array;
  /** Rank r's bytes are bytes[start[r], start[r + 1]); a rank with no token (a hole) has none. */
  private readonly start: Uint32Array;
  /** Open addressing, linear probing: rank + 1 of the token hashed there, 0 for an empty slot. */
  private readonly table: Int32Array;
  private readonly mask: number;
  private readonly split: RegExp;
  private readonly encoder = new TextEncoder();
  private scratch = new Uint8Array(1536);
  private starts = new Int32Array(512);
  private ranks = new Int32Array(512);
  /** Number of tokens (ranks with bytes). */
  readonly size: number;

  /** `data`: the `.tiktoken` text, as bytes. */
  constructor(data: Uint8Array, split: RegExp) {
    // Sticky, not global: count() steps from piece to piece with test() (see there).
    this.split = new RegExp(split.source, `${split.flags.replace('g', '')}y`);
    // Pass 1: how many ranks and bytes.
    let maxRank = -1;
    let totalBytes = 0;
    let tokens = 0;
    forEachLine(data, (pos, space, rank) => {
      let padding = 0;
      if (data[space - 1] === 0x3d) padding++;
      if (data[space - 2] === 0x3d) padding++;
      totalBytes += ((space - pos) / 4) * 3 - padding;
      if (rank <= maxRank) throw new Error('.tiktoken ranks must ascend');
      maxRank = rank;
      tokens++;
    });
    this.size = tokens;
    this.bytes = new Uint8Array(totalBytes);
    this.start = new Uint32Array(maxRank + 2);
    let slots = 1;
    while (slots < tokens * 2) slots *= 2; // load factor <= 0.5
    this.table = new Int32Array(slots);
    this.mask = slots - 1;

    // Pass 2: decode every token into place and index it.
    let w = 0;
    let nextRank = 0;
    forEachLine(data, (pos, space, rank) => {
      while (nextRank <= rank) this.start[nextRank++] = w; // holes get no bytes
      const from = w;
      let bits = 0;
      let acc = 0;
      for (let i = pos; i < space; i++) {
        const c = data[i]!;
        if (c === 0x3d) break; // '=' padding
        const v = c < 128 ? BASE64[c]! : -1;
        if (v < 0) throw new Error(`bad base64 in .tiktoken at byte ${i}`);
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
          bits -= 8;
          this.bytes[w++] = (acc >> bits) & 0xff;
        }
      }
      this.insert(rank, from, w);
    });
    this.start[nextRank] = w;
  }

  private hash(from: number, to: number, bytes: Uint8Array): number {
    let h = FNV_OFFSET;
    for (let i = from; i < to; i++) h = Math.imul(h ^ bytes[i]!, FNV_PRIME);
    return h;
  }

  private insert(rank: number, from: number, to: number): void {
    for (let slot = this.hash(from, to, this.bytes) & this.mask; ; slot = (slot + 1) & this.mask) {
      const there = this.table[slot]! - 1;
      if (there === NOT_FOUND) {
        this.table[slot] = rank + 1;
        return;
      }
      if (this.equals(there, this.bytes, from, to)) throw new Error(`duplicate token at rank ${rank}`);
    }
  }

  private equals(rank: number, key: Uint8Array, from: number, to: number): boolean {
    const s = this.start[rank]!;
    if (this.start[rank + 1]! - s !== to - from) return false;
    const bytes = this.bytes;
    for (let i = 0; i < to - from; i++) if (bytes[s + i] !== key[from + i]) return false;
    return true;
  }

  /** The rank of the token whose bytes are exactly `key[from, to)`, or -1. */
  private find(key: Uint8Array, from: number, to: number): number {
    for (let slot = this.hash(from, to, key) & this.mask; ; slot = (slot + 1) & this.mask) {
      const rank = this.table[slot]! - 1;
      if (rank === NOT_FOUND || this.equals(rank, key, from, to)) return rank;
    }
  }

  /** gpt-tokenizer's `getBpeRankFromBytes`, quirks included (see the top of this file). */
  private rankOfBytes(key: Uint8Array, from: number, to: number): number {
    if (isValidUtf8(key, from, to)) {
      if (startsWithBom(key, from, to)) {
        from += 3; // TextDecoder drops one leading BOM
        if (from === to || startsWithBom(key, from, to)) return NOT_FOUND;
      }
    }
    return this.find(key, from, to);
  }

  /**
   * gpt-tokenizer's `getBpeRankFromString` (a Map of the tokens it stores as strings) for
   * `text.slice(from, to)`, without the slice when it is ASCII (most pieces are): found only if
   * the text is well-formed (no lone surrogate) and does not start with a BOM.
   */
  private isTokenAt(text: string, from: number, to: number): boolean {
    const n = to - from;
    let h = FNV_OFFSET;
    let ascii = true;
    for (let i = from; i < to; i++) {
      const c = text.charCodeAt(i);
      if (c >= 0x80) {
        ascii = false;
        break;
      }
      h = Math.imul(h ^ c, FNV_PRIME);
    }
    if (ascii) {
      for (let slot = h & this.mask; ; slot = (slot + 1) & this.mask) {
        const rank = this.table[slot]! - 1;
        if (rank === NOT_FOUND) return false;
        const s = this.start[rank]!;
        if (this.start[rank + 1]! - s !== n) continue;
        let same = true;
        for (let i = 0; i < n; i++) {
          if (this.bytes[s + i] !== text.charCodeAt(from + i)) {
            same = false;
            break;
          }
        }
        if (same) return true;
      }
    }
    if (from !== 0 || to !== text.length) text = text.slice(from, to);
    if (text.charCodeAt(0) === 0xfeff || hasLoneSurrogate(text)) return false;
    const len = this.utf8(text);
    return this.find(this.scratch, 0, len) !== NOT_FOUND;
  }

  /** Encodes `text` into `scratch` (lone surrogates become U+FFFD, as TextEncoder does); its length. */
  private utf8(text: string): number {
    if (this.scratch.length < text.length * 3) this.scratch = new Uint8Array(text.length * 3);
    return this.encoder.encodeInto(text, this.scratch).written;
  }

  /** How many tokens byte-pair merging `scratch[0, n)` gives (gpt-tokenizer's `bytePairMerge`). */
  private mergedParts(n: number): number {
    if (n <= 1) return n;
    if (this.starts.length < n + 1) {
      this.starts = new Int32Array(n + 1);
      this.ranks = new Int32Array(n + 1);
    }
    const piece = this.scratch;
    const starts = this.starts;
    const ranks = this.ranks;
    const rankOf = (from: number, to: number) => {
      const rank = this.rankOfBytes(piece, from, to);
      return rank === NOT_FOUND ? NO_MERGE : rank;
    };
    for (let i = 0; i <= n; i++) {
      starts[i] = i;
      ranks[i] = i < n - 1 ? rankOf(i, i + 2) : NO_MERGE;
    }
    let m = n + 1; // live length of starts and ranks
    while (m > 1) {
      let lowest = NO_MERGE;
      let at = -1;
      for (let i = 0; i < m - 1; i++) {
        if (ranks[i]! < lowest) {
          lowest = ranks[i]!;
          at = i;
        }
      }
      if (at === -1) break;
      starts.copyWithin(at + 1, at + 2, m);
      ranks.copyWithin(at, at + 1, m);
      m--;
      ranks[at] = at + 2 < m ? rankOf(starts[at]!, starts[at + 2]!) : NO_MERGE;
      if (at > 0) ranks[at - 1] = at + 1 < m ? rankOf(starts[at - 1]!, starts[at + 1]!) : NO_MERGE;
    }
    return m - 1;
  }

  /** Tokens of `text`, special-token look-alikes counted as plain text. */
  count(text: string): number {
    // The split is sticky and stepped with test(): exec() would build a match array (and a string)
    // for every piece, which made the split the largest allocation of a whole request. A position
    // nothing matches (none does with these patterns) is skipped, as a global search would.
    const split = this.split;
    let total = 0;
    let at = 0;
    while (at < text.length) {
      split.lastIndex = at;
      if (!split.test(text) || split.lastIndex === at) {
        at++;
        continue;
      }
      const end = split.lastIndex;
      if (this.isTokenAt(text, at, end) || (end - at === 1 && text.charCodeAt(at) <= 0x7f)) total += 1;
      else total += this.mergedParts(this.utf8(text.slice(at, end)));
      at = end;
    }
    return total;
  }

  /** The bytes of rank `rank`'s token (a copy), or undefined for a rank with no token. */
  tokenBytes(rank: number): Uint8Array | undefined {
    if (rank < 0 || rank + 1 >= this.start.length) return undefined;
    const from = this.start[rank]!;
    const to = this.start[rank + 1]!;
    return to > from ? this.bytes.slice(from, to) : undefined;
  }

  /** Number of ranks, holes included (the highest rank + 1). */
  get rankCount(): number {
    return this.start.length - 1;
  }

  /** Bytes held (typed arrays only), for diagnostics. */
  get byteLength(): number {
    return this.bytes.byteLength + this.start.byteLength + this.table.byteLength;
  }
}

function hasLoneSurrogate(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
    }
    return true;
  }
  return false;
}

/** Reads an encoding's `.tiktoken` file and indexes it (o200k_base: ~105 ms, 4.1 MB). */
export function loadBpe(name: BpeEncodingName): BpeCounter {
  return new BpeCounter(readFileSync(tiktokenFile(name)), SPLIT[name]);
}
