// Relays an upstream SSE stream to the client event by event, as each arrives, while reading usage.
import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import type { StreamEventInfo, Usage } from './usage.js';
import { readChunkUsage } from './usage.js';
import { openAIErrorBody } from '../errors.js';
import { carriesError, type SecretMasker } from '../upstream/redact.js';

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
  /**
   * Called once, when upstream is done: at its terminal event (`[DONE]`, or one the reader marks
   * final), else at its end or when it fails. A returned promise is awaited before the client gets
   * that terminal event, the end of the stream or the in-band error (e.g. to give back the key's
   * concurrency lease first); a rejection counts as done.
   */
  beforeEnd?: () => Promise<void> | void;
  /**
   * Masks server keys in an error event's data before anything sees it (the upstream client's
   * maskSecrets): a mid-stream error is upstream error text, like an error body. Other events
   * are model output: they pass untouched, unless one holds a server key itself (a native search
   * per event, when the masker offers one), which alone is masked.
   */
  maskError?: ((data: string) => string) & Partial<Pick<SecretMasker, 'hasServerKey' | 'maskServerKeys'>>;
  /**
   * Keep every event's data in the result (default true), to bill a stream cut short from what it
   * generated. A relay that bills nothing (a stored response's replay) need not hold them.
   */
  keepData?: boolean;
  /**
   * Past this many characters of kept event data (default KEPT_DATA_MAX_CHARS), the events are
   * replaced by the text they generated (`textOf`, the endpoint's generatedText) and every later
   * event adds only its own: an event carries ~200 bytes of JSON for a token or two of text, so a
   * long generation held 20 MB per 100k tokens, per open stream. Such a stream is not cached
   * (result.dataDropped). Without `textOf`, every event is kept.
   */
  textOf?: (data: readonly string[]) => string;
  keptDataMaxChars?: number;
  /**
   * The stream's events are typed, as the Responses API's are (`event:` lines, data with `type` and
   * `sequence_number`): the in-band error that ends an interrupted stream is then such an `error` event.
   */
  typedEvents?: boolean;
}

export interface RelayResult {
  /** Upstream finished the stream normally: `data: [DONE]`, or the endpoint's terminal event. */
  completed: boolean;
  usage?: Usage;
  /** The model upstream says answered, from the usage chunk. */
  model?: string;
  /** The stream ended early: client gone, upstream error or timeout. */
  error?: unknown;
  /**
   * Number of events relayed, in-band errors excepted. Not a measure of output: a role chunk or
   * response.created carries no token (the usage estimate of a cut stream reads `data`).
   */
  events: number;
  /** Upstream sent an in-band error event (it broke the stream off, or refused it). */
  upstreamError?: boolean;
  /** The stream ended saying the work failed (StreamEventInfo.failure): that error's code. */
  failure?: string;
  /**
   * The data of every event upstream sent (except [DONE]). Kept so that a stream cut short before
   * its usage chunk can still be billed from a local count of what it generated; past
   * RelayOptions.keptDataMaxChars, only those after `text` (see dataDropped).
   */
  data: string[];
  /** The events were too many to keep: `text` is what those dropped generated (the rest is in `data`). */
  dataDropped?: boolean;
  text?: string;
}

/** How much event data a stream keeps before it keeps only the text the events generated (RelayOptions.textOf). */
export const KEPT_DATA_MAX_CHARS = 4 * 1024 * 1024;

/** One server-sent event: its type (`event:`), id (`id:`) and data (`data:` lines, joined by \n). */
export interface SseEvent {
  event?: string;
  id?: string;
  data: string;
}

/** Re-serialises one parsed event. Multi-line data becomes several `data:` lines, as the spec says. */
export function formatEvent(e: SseEvent): string {
  let out = '';
  if (e.event) out += `event: ${e.event}\n`;
  if (e.id) out += `id: ${e.id}\n`;
  if (e.data.includes('\n')) for (const line of e.data.split('\n')) out += `data: ${line}\n`;
  else out += `data: ${e.data}\n`;
  return `${out}\n`;
}

/** The default reader: chat/completions chunks, whose stream ends with `data: [DONE]`. */
const readChatChunk = (data: string): StreamEventInfo | undefined => readChunkUsage(data);

/**
 * A mid-stream error: the Responses API's `error` and `response.failed` events, or data that
 * carries an error (`data: {"error": ...}`, as chat completions report one; a response object
 * whose `error` is set). Checking an ordinary chunk is one native search for `"error"`.
 */
function isErrorEvent(e: SseEvent): boolean {
  return e.event === 'response.failed' || isInBandError(e);
}

/**
 * An in-band error that breaks a stream off (a typed `error` event, or data that carries an error):
 * not output. Unlike `response.failed`, a terminal event that carries the response and its usage.
 */
function isInBandError(e: SseEvent): boolean {
  return e.event === 'error' || carriesError(e.data);
}

const NULL_USAGE = '"usage":null';

/**
 * A chunk without the `"usage":null` that OpenAI writes into every chunk only when usage was asked
 * for: a client that did not ask (the gateway did, for it) gets chunks as OpenAI would have sent
 * them. The key with its quotes cannot occur inside a JSON string (its quotes would be escaped), and
 * OpenAI writes it last, at the top level: the last occurrence, with its comma, is that field. Other
 * spellings (`"usage": null` from an upstream that spaces its JSON) are left as they came.
 */
function withoutNullUsage(data: string): string {
  const at = data.lastIndexOf(NULL_USAGE);
  if (at < 0) return data;
  if (data[at - 1] === ',') return data.slice(0, at - 1) + data.slice(at + NULL_USAGE.length);
  if (data[at + NULL_USAGE.length] === ',') return data.slice(0, at) + data.slice(at + NULL_USAGE.length + 1);
  return data;
}

/**
 * Masks one event as the relay does: all of an error event's data, only server keys in other data.
 * Its `event` and `id` fields are never model output, so anything key-shaped in them is masked
 * (an upstream that echoes the Authorization header there would hand the server key out).
 */
function maskEvent(e: SseEvent, mask: NonNullable<RelayOptions['maskError']>, isError = isErrorEvent(e)): void {
  if (isError) e.data = mask(e.data);
  else if (mask.hasServerKey?.(e.data)) e.data = mask.maskServerKeys!(e.data);
  if (e.id !== undefined) e.id = mask(e.id);
  if (e.event !== undefined) e.event = mask(e.event);
}

/**
 * A whole event-stream body (one relayed buffered, not as a stream) with its events masked as the
 * relay masks them. Unchanged text comes back as it came; otherwise every event is re-serialised.
 */
export function maskSseText(text: string, mask: NonNullable<RelayOptions['maskError']>): string {
  const events: SseEvent[] = [];
  const parser = new SseParser((e) => events.push(e));
  parser.feed(text);
  parser.feed('\n\n'); // a last event without its blank line is still one
  let changed = false;
  for (const e of events) {
    const before = e.data;
    maskEvent(e, mask);
    if (e.data !== before) changed = true;
  }
  return changed ? events.map(formatEvent).join('') : text;
}

const INTERRUPTED = 'The upstream stream was interrupted.';

/**
 * The in-band error that ends a stream upstream broke off, as OpenAI reports a mid-stream error: a
 * chat-style `data: {"error": ...}`, or for typed streams (the Responses API) an `error` event with
 * the next sequence_number after `lastData`'s.
 */
export function interruptionEvent(typed: boolean, lastData: string | undefined): SseEvent {
  if (!typed) return { data: JSON.stringify(openAIErrorBody(INTERRUPTED, 'server_error', 'upstream_stream_error')) };
  const last = /"sequence_number"\s*:\s*(\d+)/.exec(lastData ?? '')?.[1];
  const sequenceNumber = last === undefined ? 0 : Number(last) + 1;
  return {
    event: 'error',
    data: JSON.stringify({ type: 'error', code: 'upstream_stream_error', message: INTERRUPTED, param: null, sequence_number: sequenceNumber }),
  };
}

const LF = 10;
const SPACE = 32;
const COLON = 58;

/**
 * An incremental parser of the event-stream format, with eventsource-parser 3's behaviour (which
 * Tollgate used before; test/unit/sse.test.ts checks both agree on any split of any input once a
 * last LF ends it, as this one ends a line at a CR that ends a chunk, where the library waits): lines
 * end with CR, LF or CRLF; a blank line dispatches the event if it had data; `data` lines are
 * joined by \n; `event` and `id` apply to the event being read (not to later ones); an `id`
 * containing NUL is ignored; `retry` and unknown fields are ignored, comments too (or handed to
 * onComment, between events); one space after the colon is dropped. A plain object with a few
 * fields, not a set of closures: there is one per open stream.
 */
export class SseParser {
  /** An incomplete last line, kept until the rest arrives. */
  private partial = '';
  /** The last chunk ended with a CR: an LF opening the next one is the rest of that CRLF. */
  private afterCr = false;
  private firstChunk = true;
  private id: string | undefined = undefined;
  private eventType: string | undefined = undefined;
  private data = '';
  private dataLines = 0;

  constructor(
    private readonly onEvent: (event: SseEvent) => void,
    /** Hears each comment line (`: keep-alive`) read between events, colon included; those within an event are dropped. */
    private readonly onComment?: (line: string) => void,
  ) {}

  feed(chunk: string): void {
    if (this.firstChunk) {
      this.firstChunk = false;
      // eventsource-parser drops a UTF-8 BOM seen as three Latin-1 characters (decoders drop U+FEFF).
      if (chunk.charCodeAt(0) === 0xef && chunk.charCodeAt(1) === 0xbb && chunk.charCodeAt(2) === 0xbf) chunk = chunk.slice(3);
    }
    if (this.afterCr && chunk.length > 0) {
      this.afterCr = false;
      if (chunk.charCodeAt(0) === LF) chunk = chunk.slice(1);
    }
    if (this.partial.length > 0 && chunk.indexOf('\n') === -1 && chunk.indexOf('\r') === -1) {
      this.partial += chunk; // still no line end: nothing to parse yet
      return;
    }
    const text = this.partial.length > 0 ? this.partial + chunk : chunk;
    let pos = 0;
    let cr = text.indexOf('\r');
    let lf = text.indexOf('\n');
    for (;;) {
      if (cr !== -1 && cr < pos) cr = text.indexOf('\r', pos);
      if (lf !== -1 && lf < pos) lf = text.indexOf('\n', pos);
      let end: number;
      let next: number;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        end = cr;
        // A CR ends its line at once: waiting to see whether an LF follows held a stream that ends
        // its lines with CR alone one chunk behind, and lost its last event.
        if (cr === text.length - 1) this.afterCr = true;
        next = text.charCodeAt(cr + 1) === LF ? cr + 2 : cr + 1;
      } else if (lf !== -1) {
        end = lf;
        next = lf + 1;
      } else break;
      this.line(text, pos, end);
      pos = next;
    }
    this.partial = pos === 0 ? text : text.slice(pos);
  }

  private line(text: string, start: number, end: number): void {
    if (start === end) {
      if (this.dataLines > 0) this.onEvent({ id: this.id, event: this.eventType, data: this.data });
      this.id = undefined;
      this.eventType = undefined;
      this.data = '';
      this.dataLines = 0;
      return;
    }
    if (text.charCodeAt(start) === COLON) {
      if (this.onComment && this.dataLines === 0 && this.eventType === undefined && this.id === undefined) this.onComment(text.slice(start, end));
      return;
    }
    const colon = text.indexOf(':', start);
    let field: string;
    let value: string;
    if (colon === -1 || colon >= end) {
      field = text.slice(start, end);
      value = '';
    } else {
      field = text.slice(start, colon);
      const from = colon + 1 < end && text.charCodeAt(colon + 1) === SPACE ? colon + 2 : colon + 1;
      value = text.slice(from, end);
    }
    switch (field) {
      case 'data':
        this.data = this.dataLines === 0 ? value : `${this.data}\n${value}`;
        this.dataLines++;
        break;
      case 'event':
        this.eventType = value || undefined;
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      default: // retry, unknown fields: nothing a relay needs
    }
  }
}

/**
 * Starts relaying `source` (upstream SSE bytes) into the returned stream, which the caller hands to
 * the client. Each event is pushed as soon as it is complete and the relay honours the client's
 * back-pressure (upstream is paused while the client's buffer is full). `done` settles once the
 * relay stops for any reason.
 */
export function relaySse(source: Readable, options: RelayOptions): { stream: Readable; done: Promise<RelayResult> } {
  const relay = new SseRelay(source, options);
  return { stream: relay, done: relay.done };
}

/**
 * The relay is the client-facing Readable itself, fed from the source's 'data' events. Memory is
 * the point of its shape: a gateway holds one per open stream (thousands at once). The first
 * version (a PassThrough, an async iterator over the source, a TextDecoder, eventsource-parser's
 * closures) cost ~5.9 KB of heap and ~1.6 KB of native memory (the decoder's ICU converter) per
 * stream; this one ~3.2 KB, both counting the pipe to the client and three events' data
 * (test/unit/sse.test.ts bounds it). Hence one object with fields and prototype methods, four
 * listener functions, a StringDecoder, and no intermediate stream.
 */
class SseRelay extends Readable {
  readonly result: RelayResult = { completed: false, events: 0, data: [] };
  readonly done: Promise<RelayResult>;
  private settle!: (result: RelayResult) => void;
  /** Events parsed and not yet handed on, and comment lines between them (upstream's keep-alives), in order. */
  private readonly pending: (SseEvent | string)[] = [];
  private readonly parser = new SseParser(
    (e) => this.pending.push(e),
    (comment) => this.pending.push(comment),
  );
  // Keeps a multi-byte character split across chunks whole. (Not source.setEncoding: undici's body
  // ignores it.) TextDecoder would hold a native ICU converter per stream.
  private readonly decoder = new StringDecoder('utf8');
  /** The relay has stopped (ended, failed, or the client left): nothing more is pushed. */
  private stopped = false;
  /** An onEvent promise is pending: later events wait behind it, in order. */
  private waiting = false;
  /** The client's buffer is full: upstream stays paused until the client reads. */
  private full = false;
  private sourceEnded = false;
  private firstChunk = true;
  /** An event (of any kind) has been handed to the client: onFirstEvent has been called. */
  private relayedAny = false;
  /**
   * beforeEnd: undefined until it is called, then its pending promise (which the terminal event,
   * the end and the error event wait for), null once there is nothing (more) to wait for.
   */
  private endGate: Promise<void> | null | undefined = undefined;
  /**
   * Events relayed but not yet pushed: the events of one upstream chunk go to the client in one
   * push, so one socket write, not one each (a write per event was the largest item of a stream's
   * CPU profile). Pushed at the end of every drain, before any wait, and before the end.
   */
  private out = '';
  /** The data of the last event read: an interruption's typed error event continues its sequence_number. */
  private lastData: string | undefined;
  /** Characters of event data in result.data. */
  private keptChars = 0;

  constructor(
    private readonly source: Readable,
    private readonly options: RelayOptions,
  ) {
    super();
    this.done = new Promise<RelayResult>((resolve) => (this.settle = resolve));
    source.on('data', this.onData);
    source.on('end', this.onEnd);
    source.on('error', this.onError);
    source.on('close', this.onClose);
  }

  override _read(): void {
    this.full = false;
    if (!this.waiting && !this.stopped) this.source.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    // The client went away (or the consumer destroyed the stream): stop reading upstream.
    if (!this.stopped) this.stop(err ?? new Error('client closed the stream'), false);
    callback(err);
  }

  private readonly onData = (bytes: Buffer | string): void => {
    if (this.stopped) return;
    let chunk = typeof bytes === 'string' ? bytes : this.decoder.write(bytes);
    if (this.firstChunk && chunk.length > 0) {
      this.firstChunk = false;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1); // a byte-order mark (TextDecoder dropped it too)
    }
    this.parser.feed(chunk);
    this.drain();
  };

  private readonly onEnd = (): void => {
    this.sourceEnded = true;
    this.drain();
  };

  private readonly onError = (err: Error): void => this.stop(err);

  private readonly onClose = (): void => {
    // Destroyed before its end without an error (e.g. aborted): what for-await over it reported.
    if (!this.sourceEnded) this.stop(Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
  };

  /** Hands every parsed event on, in order; pauses upstream behind an onEvent (or beforeEnd) promise. */
  private drain(): void {
    const { result, options } = this;
    try {
      while (!this.waiting && !this.stopped) {
        const e = this.pending.shift();
        if (e === undefined) break;
        if (typeof e === 'string') {
          // A keep-alive: passed on, so that the client, and every proxy on its way, hears the stream
          // is alive while a model thinks; upstream text, masked as an event's id is.
          this.out += `${options.maskError ? options.maskError(e) : e}\n\n`;
          continue;
        }
        // Checked before masking, which may rewrite the data (one native search for "error" per event).
        const inBandError = e.data !== '[DONE]' && isInBandError(e);
        if (inBandError) result.upstreamError = true;
        if (options.maskError) maskEvent(e, options.maskError, inBandError || e.event === 'response.failed');
        this.lastData = e.data;
        let seen: Promise<unknown> | void = undefined;
        /** Upstream's last event ([DONE], or the endpoint's final one): the client's stream ends with it. */
        let terminal = false;
        if (e.data === '[DONE]') {
          result.completed = true;
          terminal = true;
          seen = this.ending();
        } else {
          if (options.keepData !== false) this.keep(e.data);
          const found = (options.readEvent ?? readChatChunk)(e.data, e.event);
          if (found) {
            if (found.usage) result.usage = found.usage;
            if (found.model) result.model = found.model;
            if (found.final) result.completed = true;
            if (found.failure) result.failure = found.failure;
            if (found.usageOnly && options.dropUsageChunk) continue;
          }
          if (options.dropUsageChunk) e.data = withoutNullUsage(e.data);
          seen = options.onEvent?.(e.data, e.event);
          if (found?.final) {
            terminal = true;
            const ending = this.ending();
            if (ending) seen = seen ? Promise.all([seen, ending]) : ending;
          }
        }
        if (seen) {
          this.flush();
          this.waiting = true;
          this.source.pause();
          seen.then(
            () => {
              this.waiting = false;
              if (this.stopped) return;
              try {
                this.relay(e, inBandError);
              } catch (err) {
                this.stop(err);
                return;
              }
              if (terminal) this.endAtTerminal();
              else this.drain();
            },
            (err: unknown) => this.stop(err),
          );
          return;
        }
        this.relay(e, inBandError);
        if (terminal) return this.endAtTerminal();
      }
    } catch (err) {
      this.stop(err);
      return;
    }
    if (this.stopped || this.waiting) return;
    this.flush();
    if (this.sourceEnded) this.finish();
    else if (!this.full) this.source.resume();
  }

  /** Keeps an event's data for the bill, within keptDataMaxChars (see RelayOptions.textOf). */
  private keep(data: string): void {
    const { result, options } = this;
    result.data.push(data);
    if (!options.textOf) return;
    this.keptChars += data.length;
    if (this.keptChars <= (options.keptDataMaxChars ?? KEPT_DATA_MAX_CHARS)) return;
    result.text = (result.text ?? '') + options.textOf(result.data);
    result.dataDropped = true;
    result.data.length = 0;
    this.keptChars = 0;
  }

  private relay(e: SseEvent, inBandError: boolean): void {
    if (!this.relayedAny) {
      this.relayedAny = true;
      this.options.onFirstEvent?.();
    }
    if (!inBandError) this.result.events++; // an error is not output
    this.out += formatEvent(e);
  }

  /** Pushes the relayed events; upstream pauses while the client's buffer is full. */
  private flush(): void {
    if (this.out === '') return;
    const out = this.out;
    this.out = '';
    if (!this.push(out)) {
      this.full = true;
      this.source.pause();
    }
  }

  /** Upstream is done: calls beforeEnd the first time; what to wait for before the client sees the end. */
  private ending(): Promise<void> | undefined {
    if (this.endGate === undefined) {
      const pending = this.options.beforeEnd?.();
      this.endGate = pending
        ? pending.then(
            () => void (this.endGate = null),
            () => void (this.endGate = null),
          )
        : null;
    }
    return this.endGate ?? undefined;
  }

  /**
   * Upstream's terminal event is relayed: the client's stream ends with it, whatever upstream does
   * after (an upstream that held its connection open had the client wait for the total timeout,
   * then an in-band error after [DONE]; anything it sent after was relayed too). Upstream's body
   * is read to its end, and dropped, so its connection can serve again; an error there (its
   * timeout) changes nothing now.
   */
  private endAtTerminal(): void {
    this.flush();
    this.stopped = true;
    this.detach();
    this.source.resume();
    this.push(null);
    this.settle(this.result);
  }

  private finish(): void {
    if (this.stopped) return;
    this.flush();
    // Upstream ended without a terminal event: the end waits for beforeEnd as that event would.
    const gate = this.ending();
    if (gate) {
      this.waiting = true;
      void gate.then(() => {
        this.waiting = false;
        this.finish();
      });
      return;
    }
    this.stopped = true;
    this.detach();
    this.push(null);
    this.settle(this.result);
  }

  /** Stops on an error: upstream is dropped and, if the client is still there, told in-band. */
  private stop(err: unknown, tellClient = true): void {
    if (this.stopped) return;
    this.stopped = true;
    this.result.error = err;
    this.detach();
    this.source.destroy();
    if (tellClient && !this.destroyed && !this.readableEnded) {
      // Headers are gone already; tell the client in-band, the way OpenAI reports mid-stream errors,
      // after the events relayed before it.
      this.flush();
      const tell = () => {
        if (this.destroyed) return; // the client left meanwhile
        this.push(formatEvent(interruptionEvent(this.options.typedEvents === true, this.lastData)));
        this.push(null);
      };
      const gate = this.ending();
      if (gate) void gate.then(tell);
      else tell();
    }
    this.settle(this.result);
  }

  private detach(): void {
    this.source.off('data', this.onData);
    this.source.off('end', this.onEnd);
    this.source.off('close', this.onClose);
    // 'error' stays handled: a source that fails later must not throw an unhandled error.
  }
}
