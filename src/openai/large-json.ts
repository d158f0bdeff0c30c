// Reading the few members the gateway needs (usage, model) of a JSON answer too large to parse
// whole without holding the event loop: an embeddings batch is tens of MB of numbers.
import { depthAt } from '../upstream/redact.js';

/** How far from its end a large answer is searched for its last members. */
const LAST_MEMBERS_BYTES = 64 * 1024;

/** How far from its start a large answer is searched for its `model` (chat and completions write it first). */
const HEAD_BYTES = 4 * 1024;

/**
 * The members of a JSON object from its `model` (when that comes after the bulk) or its `usage` to
 * its end, as an object; undefined when they are not found in its last LAST_MEMBERS_BYTES. A slice
 * that parses as `{` + slice, starting at a member name that follows a comma, is the outermost
 * object's last members: one starting inside a nested object would close it before the end, leaving
 * text after the parsed object. (An answer broken before the slice is not seen to be broken.)
 */
export function lastMembers(bytes: Buffer): Record<string, unknown> | undefined {
  const tail = bytes.toString('utf8', Math.max(0, bytes.length - LAST_MEMBERS_BYTES));
  const usageAt = tail.lastIndexOf('"usage"');
  if (usageAt < 0) return undefined;
  const modelAt = tail.lastIndexOf('"model"', usageAt);
  for (const at of modelAt >= 0 ? [modelAt, usageAt] : [usageAt]) {
    if (!/,\s*$/.test(tail.slice(Math.max(0, at - 64), at))) continue; // a name after a comma, not `\"usage"` in a string
    try {
      const members = JSON.parse(`{${tail.slice(at)}`) as unknown;
      if (typeof members === 'object' && members !== null && 'usage' in members) return members as Record<string, unknown>;
    } catch {
      // not a member of the outermost object: try the next
    }
  }
  return undefined;
}

/** The string value of the outermost object's `model` member in the first HEAD_BYTES, if there. */
export function headModel(bytes: Buffer): string | undefined {
  const head = bytes.toString('utf8', 0, Math.min(bytes.length, HEAD_BYTES));
  const member = /"model"\s*:\s*("(?:[^"\\]|\\.)*")/g;
  for (let m = member.exec(head); m !== null; m = member.exec(head)) {
    if (depthAt(head, m.index) !== 1) continue;
    try {
      return JSON.parse(m[1]!) as string;
    } catch {
      return undefined;
    }
  }
  return undefined;
}
