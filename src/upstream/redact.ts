// Masks the server-held OpenAI keys (and anything shaped like an OpenAI key) in upstream error text.
//
// Why: OpenAI echoes the caller's key in some errors ("Incorrect API key provided: sk-proj-***abcd"),
// and a proxy in front of it may echo it whole; the caller is the gateway, so that key is a server
// key. The gateway relays upstream errors to its clients (and reads them for its logs), so every
// such text goes through here first: in `send()` for any non-2xx body and every header value (a
// request id or model name that echoes the key); an SSE event's `id` and `event` fields; for a 2xx body or event
// that carries an error (a Responses object with `status: "failed"` and its `error`, an SSE error
// event, a chunk that is an error body) wherever it is relayed. Only error text pays the full mask:
// ordinary 2xx bodies and stream events are only searched (natively, no copy) for the exact server
// keys, and key-shaped text in them is never rewritten (a model may legitimately write something
// that looks like a key; it cannot legitimately write the gateway's own key).

/** What a masked key becomes. Fixed, so nothing of the key (not even its last characters) leaks. */
export const MASKED_KEY = 'sk-...****';

/**
 * Anything shaped like an OpenAI key (sk-..., sk-proj-..., sk-svcacct-..., and OpenAI's own partly
 * masked forms with `*`) not glued to a preceding letter or digit ("task-force" stays). Our mask
 * itself does not match, so masking twice changes nothing.
 */
const OPENAI_KEY_LIKE = /(?<![A-Za-z0-9])sk-[A-Za-z0-9_*-]{8,}/g;

/**
 * The company's OpenAI organization and project ids, which OpenAI writes into some errors ("Rate
 * limit reached for gpt-4o in organization org-... on tokens per min"): not secrets, but they name
 * the account behind the gateway, as the openai-organization header (never passed on) does. Random
 * ids hold a digit somewhere: words such as org-restructuring stay.
 */
const OPENAI_ACCOUNT_ID = /(?<![A-Za-z0-9])(org|proj)([-_])(?=[A-Za-z]*[0-9])[A-Za-z0-9]{8,}/g;
/** What an organization or project id becomes: its kind, nothing of the id. */
const maskAccountId = (_id: string, kind: string, separator: string) => `${kind}${separator}****`;

/** Masks error text: every server key, anything key-shaped, and the account's organization and project ids. */
export interface SecretMasker {
  (text: string): string;
  /** Whether the text or bytes hold one of the server keys itself (a native search, nothing copied). */
  hasServerKey(data: string | Buffer): boolean;
  /** Masks only the server keys themselves: for text that is not error text (model output). */
  maskServerKeys(text: string): string;
}

/** A masker for these server keys: each occurrence of one, and of anything key-shaped, becomes MASKED_KEY. */
export function createSecretMasker(keys: readonly string[]): SecretMasker {
  // Longest first, so a key that contains another is masked whole.
  const secrets = [...new Set(keys.filter((k) => k.length > 0))].sort((a, b) => b.length - a.length);
  const maskServerKeys = (text: string): string => {
    let out = text;
    for (const secret of secrets) if (out.includes(secret)) out = out.split(secret).join(MASKED_KEY);
    return out;
  };
  const maskSecrets = (text: string): string => {
    let out = maskServerKeys(text);
    if (out.includes('sk-')) out = out.replace(OPENAI_KEY_LIKE, MASKED_KEY);
    if (out.includes('org-') || out.includes('proj_')) out = out.replace(OPENAI_ACCOUNT_ID, maskAccountId);
    return out;
  };
  const hasServerKey = (data: string | Buffer): boolean => {
    for (const secret of secrets) if (data.includes(secret)) return true;
    return false;
  };
  return Object.assign(maskSecrets, { hasServerKey, maskServerKeys });
}

const COLON = 58;

/** JSON whitespace: space, tab, LF, CR. */
const isJsonSpace = (c: number) => c === 32 || c === 9 || c === 10 || c === 13;

/**
 * Whether JSON text (or its bytes) carries an error: a top-level `"error"` member whose value is
 * not null (OpenAI's error bodies, a Responses object that failed, a chunk that is an error body).
 * A native search for `"error"` and a look at the few bytes after each: cheap enough for every 2xx
 * body (a Responses object always has `"error": null`; a chat completion has no such member).
 * Inside a JSON string a quote is escaped, so text a model wrote never matches (`\"error\"`). A
 * non-null one nested deeper (a tool parameter named `error`, metadata) is not the answer's error:
 * only then is the text before it walked, to find the member's depth.
 */
export function carriesError(data: string | Buffer): boolean {
  const length = data.length;
  for (let found = data.indexOf('"error"'); found !== -1; found = data.indexOf('"error"', found + 7)) {
    let i = found + 7;
    while (i < length && isJsonSpace(codeAt(data, i))) i++;
    if (codeAt(data, i) !== COLON) continue; // a string value "error", not a member name
    i++;
    while (i < length && isJsonSpace(codeAt(data, i))) i++;
    if (i >= length) return true; // cut: cannot tell, so treat it as an error
    // null: no error. Anything else (an object, a string) is error text, if it is the answer's own.
    const isNull = codeAt(data, i) === 110 && codeAt(data, i + 1) === 117 && codeAt(data, i + 2) === 108 && codeAt(data, i + 3) === 108;
    if (!isNull && depthAt(data, found) === 1) return true;
  }
  return false;
}

const QUOTE = 34;
const BACKSLASH = 92;

/** How deep in objects and arrays position `end` of JSON text is (1: a member of the top-level object). */
export function depthAt(data: string | Buffer, end: number): number {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < end; i++) {
    const c = codeAt(data, i);
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c === QUOTE) inString = true;
    else if (c === 123 || c === 91) depth++; // { [
    else if (c === 125 || c === 93) depth--; // } ]
  }
  return depth;
}

/** The character (or byte) at i; NaN past the end. JSON's syntax is ASCII, so both read the same. */
function codeAt(data: string | Buffer, i: number): number {
  return typeof data === 'string' ? data.charCodeAt(i) : (data[i] ?? NaN);
}
