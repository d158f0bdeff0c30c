// Plain-text layout for human output: aligned tables and key/value blocks. No colours, no trailing spaces.

/**
 * Characters that must not reach a terminal as they are: control characters (newlines, escape sequences),
 * invisible format characters (bidi embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069,
 * marks U+200E/U+200F/U+061C, zero-width characters, BOM, tags), line and paragraph separators, and lone
 * surrogates. A bidi control in a key name could otherwise reorder what the terminal shows (Trojan Source).
 */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;

/** Makes a value safe to print on one terminal line: unsafe characters (see UNSAFE) are shown escaped (\x1b, \u202e). */
export function clean(value: string): string {
  return value.replace(UNSAFE, (c) => {
    const code = c.codePointAt(0)!;
    if (code <= 0xff) return `\\x${code.toString(16).padStart(2, '0')}`;
    if (code <= 0xffff) return `\\u${code.toString(16).padStart(4, '0')}`;
    return `\\u{${code.toString(16)}}`;
  });
}

/** Shortens a string to `max` characters, marking the cut with `...`. */
export function truncate(value: string, max: number): string {
  return value.length <= max ? value : `${value.slice(0, Math.max(0, max - 3))}...`;
}

export type Align = 'left' | 'right';

/** An aligned table: a header row, then one row per entry, columns two spaces apart. */
export function renderTable(headers: string[], rows: string[][], align: Align[] = []): string {
  const cells = [headers, ...rows].map((row) => headers.map((_, i) => clean(row[i] ?? '')));
  const widths = headers.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)));
  return cells
    .map((row) =>
      row
        .map((cell, i) => (align[i] === 'right' ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** A key/value block: labels in a column, values aligned after them. */
export function renderFields(fields: [label: string, value: string][]): string {
  const width = Math.max(0, ...fields.map(([label]) => label.length));
  return fields.map(([label, value]) => `${label.padEnd(width)}  ${clean(value)}`.trimEnd()).join('\n');
}
