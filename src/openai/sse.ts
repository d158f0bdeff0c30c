// Relays an upstream SSE stream to the client event by event, as each arrives, while reading usage.
import { PassThrough, type Readable } from 'node:stream';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import type { StreamEventInfo, Usage } from './usage.js';
import { readChunkUsage } from './usage.js';
import { openAIErrorBody } from '../errors.js';

export interface RelayOptions {
  /** Drop the usage-only chunk: the gateway asked for it, the client did not. */
  dropUsageChunk: boolean;
  /** Called once, when the first event is handed to the client (time to first byte). */
  onFirstEvent?: () => void;
  /**
   * Reads one event's usage, and whether it ends the stream (the endpoint row's reader). Default:
   * chat/completions chunks, whose stream ends with `data: [DONE]`.
   */
  readEvent?: (data: string, event: string | undefined) => StreamEventInfo | undefined;
  /** Sees each event before it is relayed; a returned promise is awaited first (e.g. to record an owner). */
  onEvent?: (data: string, event: string | undefined) => Promise<void> | void;
}

export interface RelayResult {
  /** Upstream finished the stream normally: `data: [DONE]`, or the endpoint's terminal event. */
  completed: boolean;
  usage?: Usage;
  /** The model upstream says answered, from the usage chunk. */
  model?: string;
  /** The stream ended early: client gone, upstream error or timeout. */
  error?: unknown;
  /** Number of events relayed, to tell "cut short" from "never started". */
  events: number;
  /**
   * The data of every event upstream sent (except [DONE]). Kept so that a stream cut short before
   * its usage chunk can still be billed from a local count of what it generated.
   */
  data: string[];
}

/** Re-serialises one parsed event. Multi-line data becomes several `data:` lines, as the spec says. */
export function formatEvent(e: Pick<EventSourceMessage, 'event' | 'data' | 'id'>): string {
  let out = '';
  if (e.event) out += `event: ${e.event}\n`;
  if (e.id) out += `id: ${e.id}\n`;
  if (e.data.includes('\n')) for (const line of e.data.split('\n')) out += `data: ${line}\n`;
  else out += `data: ${e.data}\n`;
  return `${out}\n`;
}

/**
 * Starts relaying `source` (upstream SSE bytes) into the returned stream, which the caller hands to
 * the client. Each event is written as soon as it is complete (no buffering beyond one event) and
 * the relay honours the client's back-pressure. `done` settles once the relay stops for any reason.
 */
export function relaySse(source: Readable, options: RelayOptions): { stream: PassThrough; done: Promise<RelayResult> } {
  const out = new PassThrough();
  const result: RelayResult = { completed: false, events: 0, data: [] };
  const pending: EventSourceMessage[] = [];
  const parser = createParser({ onEvent: (e) => pending.push(e) });
  const readEvent: NonNullable<RelayOptions['readEvent']> = options.readEvent ?? ((data) => readChunkUsage(data));

  async function write(text: string) {
    if (out.write(text)) return;
    // Wait for the slow client; both listeners go once either fires, so a long stream to a slow
    // client does not pile up listeners wait after wait.
    await new Promise<void>((resolve) => {
      const done = () => {
        out.off('drain', done);
        out.off('close', done);
        resolve();
      };
      out.on('drain', done);
      out.on('close', done);
    });
  }

  async function pump(): Promise<RelayResult> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of source) {
        parser.feed(decoder.decode(chunk as Buffer, { stream: true }));
        for (let e = pending.shift(); e; e = pending.shift()) {
          if (out.destroyed) throw new Error('client closed the stream');
          if (e.data === '[DONE]') result.completed = true;
          else {
            result.data.push(e.data);
            const found = readEvent(e.data, e.event);
            if (found) {
              if (found.usage) result.usage = found.usage;
              if (found.model) result.model = found.model;
              if (found.final) result.completed = true;
              if (found.usageOnly && options.dropUsageChunk) continue;
            }
            const seen = options.onEvent?.(e.data, e.event);
            if (seen) await seen;
          }
          if (result.events++ === 0) options.onFirstEvent?.();
          await write(formatEvent(e));
        }
      }
      if (!out.destroyed) out.end();
    } catch (err) {
      result.error = err;
      source.destroy();
      if (!out.destroyed && out.writable) {
        // Headers are gone already; tell the client in-band, the way OpenAI reports mid-stream errors.
        out.end(formatEvent({ data: JSON.stringify(openAIErrorBody('The upstream stream was interrupted.', 'server_error', 'upstream_stream_error')) }));
      }
    }
    return result;
  }

  return { stream: out, done: pump() };
}
