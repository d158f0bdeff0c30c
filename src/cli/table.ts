// Plain-text layout for human output: aligned tables and key/value blocks. No colours, no trailing spaces.

/** Makes a value safe to print on one terminal line: control characters (newlines, escape sequences) are shown escaped. */
export function clean(value: string): string {
  return value.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
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
