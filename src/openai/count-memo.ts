// Token counts of texts seen recently, so text that comes back is not tokenized again.
//
// Why: a chat request carries the whole conversation, so every turn re-sends every earlier message,
// and most apps send the same system prompt, few-shot examples or tool schemas with every call.
// BPE costs ~25 us per KB of English here, the largest share of Tollgate's own CPU on a long prompt
// (a 50 KB prompt is ~1.2 ms); looking a text up costs one hash of it (~1 ns per char).
//
// How: two generations of a Map (as hashlru does): new and re-used counts go into the current one;
// when it holds `maxChars` characters of text, it becomes the previous one and the one before is
// dropped. A text in use survives every swap; memory stays under ~2 x maxChars characters of keys
// (each a string the request already had, kept alive until its generation is dropped).

export interface CountMemoStats {
  entries: number;
  /** Characters of text held as keys, both generations. */
  chars: number;
  hits: number;
  misses: number;
}

export class CountMemo {
  #current = new Map<string, number>();
  #previous = new Map<string, number>();
  #currentChars = 0;
  #previousChars = 0;
  #hits = 0;
  #misses = 0;

  /**
   * @param maxChars characters of text per generation
   * @param minLength texts shorter than this are counted every time: cheap to count, and not worth a slot
   */
  constructor(
    readonly maxChars: number,
    readonly minLength: number,
  ) {}

  /** The remembered count of `text`, or undefined (then count it and set() it). */
  get(text: string): number | undefined {
    if (!this.#fits(text)) return undefined;
    const current = this.#current.get(text);
    if (current !== undefined) {
      this.#hits++;
      return current;
    }
    const previous = this.#previous.get(text);
    if (previous === undefined) {
      this.#misses++;
      return undefined;
    }
    this.#hits++;
    this.#add(text, previous); // in use: carried into the current generation
    return previous;
  }

  set(text: string, tokens: number): void {
    if (this.#fits(text)) this.#add(text, tokens);
  }

  #fits(text: string): boolean {
    return text.length >= this.minLength && text.length <= this.maxChars;
  }

  #add(text: string, tokens: number) {
    if (this.#currentChars + text.length > this.maxChars) {
      this.#previous = this.#current;
      this.#previousChars = this.#currentChars;
      this.#current = new Map();
      this.#currentChars = 0;
    }
    this.#current.set(text, tokens);
    this.#currentChars += text.length;
  }

  stats(): CountMemoStats {
    return {
      entries: this.#current.size + this.#previous.size,
      chars: this.#currentChars + this.#previousChars,
      hits: this.#hits,
      misses: this.#misses,
    };
  }
}
