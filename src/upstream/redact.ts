// Masks the server-held OpenAI keys (and anything shaped like an OpenAI key) in upstream error text.
//
// Why: OpenAI echoes the caller's key in some errors ("Incorrect API key provided: sk-proj-***abcd"),
// and a proxy in front of it may echo it whole; the caller is the gateway, so that key is a server
// key. The gateway relays upstream errors to its clients (and reads them for its logs), so every
// such text goes through here first: in `send()` for any non-2xx body, in the SSE relay for error
// events. Only error text pays: 2xx bodies and ordinary stream events are never scanned (and must
// not be: a model may legitimately write something that looks like a key).

/** What a masked key becomes. Fixed, so nothing of the key (not even its last characters) leaks. */
export const MASKED_KEY = 'sk-...****';

/**
 * Anything shaped like an OpenAI key (sk-..., sk-proj-..., sk-svcacct-..., and OpenAI's own partly
 * masked forms with `*`) not glued to a preceding letter or digit ("task-force" stays). Our mask
 * itself does not match, so masking twice changes nothing.
 */
const OPENAI_KEY_LIKE = /(?<![A-Za-z0-9])sk-[A-Za-z0-9_*-]{8,}/g;

export type SecretMasker = (text: string) => string;

/** A masker for these server keys: each occurrence of one, and of anything key-shaped, becomes MASKED_KEY. */
export function createSecretMasker(keys: readonly string[]): SecretMasker {
  // Longest first, so a key that contains another is masked whole.
  const secrets = [...new Set(keys.filter((k) => k.length > 0))].sort((a, b) => b.length - a.length);
  return function maskSecrets(text: string): string {
    let out = text;
    for (const secret of secrets) if (out.includes(secret)) out = out.split(secret).join(MASKED_KEY);
    return out.includes('sk-') ? out.replace(OPENAI_KEY_LIKE, MASKED_KEY) : out;
  };
}
