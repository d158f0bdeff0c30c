// Where the log goes: stdout, in batches.
import { writeSync } from 'node:fs';
import pino, { type DestinationStream } from 'pino';

export interface LineBatcher {
  /** Takes one log line (pino calls it with each line, newline included). */
  write(line: string): void;
  /** Hands the lines taken so far to the sink as one string. */
  flush(): void;
  /** Removes and returns the lines not yet handed over, joined (for the exit path). */
  take(): string;
}

/**
 * Collects lines and hands them to `sink` joined: once `minBytes` (UTF-16 units, close enough) have
 * gathered, and by `flush()`. Lines go in an array and are joined once per batch. (SonicBoom's own
 * batching appends every line to one growing string and measures that string's byte length on
 * each write, which flattens it every time: ~7 KB of garbage per ~1.2 KB request line, the largest
 * single allocation of a cache hit.)
 */
export function createLineBatcher(sink: (batch: string) => void, minBytes: number): LineBatcher {
  let lines: string[] = [];
  let size = 0;
  const take = () => {
    const batch = lines.length === 1 ? lines[0]! : lines.join('');
    lines = [];
    size = 0;
    return batch;
  };
  return {
    write(line) {
      lines.push(line);
      size += line.length;
      if (size >= minBytes) sink(take());
    },
    flush() {
      if (lines.length > 0) sink(take());
    },
    take,
  };
}

/**
 * stdout in batches of about 4 KB, and at least every 100 ms, instead of one write(2) per line (the
 * request line's write was 7% of the CPU of a cache hit). Each batch is written synchronously, as
 * pino's own default destination writes: a SonicBoom in sync mode (partial writes handled; a full
 * pipe waited for). Asynchronous writes lost lines at exit: a batch still in libuv's thread pool
 * when the process exits may or may not have been written, and nothing can tell which (the exit
 * test lost its first batch in about one run in four). Now nothing is ever in flight: at exit the
 * lines still held here are written synchronously. Only a SIGKILL loses the last 100 ms of lines
 * (the usage events themselves are in the store).
 */
export function batchedStdout({ minBytes = 4096, flushMs = 100 } = {}): DestinationStream {
  const sonic = pino.destination({ dest: 1, sync: true });
  const batcher = createLineBatcher((batch) => sonic.write(batch), minBytes);
  setInterval(() => batcher.flush(), flushMs).unref();
  process.once('exit', () => writeAllSync(1, batcher.take()));
  return batcher;
}

/** Writes `text` whole to `fd`, retrying a full non-blocking pipe for up to ~1 s. */
function writeAllSync(fd: number, text: string): void {
  let rest = Buffer.from(text);
  for (let attempts = 0; rest.length > 0 && attempts < 100; ) {
    try {
      rest = rest.subarray(writeSync(fd, rest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return; // stdout is gone: nothing to do
      attempts++;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
}
