// Reads the Redis Lua scripts that sit next to this module (src/store/lua/*.lua; dist/store/lua/ once built).
import { readFileSync } from 'node:fs';

export type ScriptName = 'admit' | 'settle' | 'hit' | 'lookup' | 'fill' | 'record' | 'list' | 'swap' | 'keypage';

const cache = new Map<ScriptName, string>();

/** The text of `lua/<name>.lua`. Throws at once if the file is missing (e.g. a build that did not copy it). */
export function loadLua(name: ScriptName): string {
  let text = cache.get(name);
  if (text === undefined) {
    text = readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8');
    cache.set(name, text);
  }
  return text;
}
