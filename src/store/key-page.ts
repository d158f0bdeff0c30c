// Paging the key list (Store.listKeysPage): what both stores check, and how they cut a page.
import type { KeyPageQuery } from './store.js';

/** The most keys one listKeysPage call returns (and the admin API's `limit` at most). */
export const MAX_KEY_PAGE = 1000;

export function checkKeyPageQuery({ limit, after }: KeyPageQuery) {
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_KEY_PAGE) {
    throw new RangeError(`limit must be an integer from 1 to ${MAX_KEY_PAGE}, got ${limit}`);
  }
  if (after !== undefined && (typeof after !== 'string' || after === '')) throw new RangeError('after must be a non-empty key id');
}

/**
 * The ids of one page, from the ids that follow the cursor in list order, read one past the limit:
 * that extra id is only there to say whether more follow.
 */
export function cutPage(idsFromCursor: readonly string[], limit: number): { ids: string[]; hasMore: boolean } {
  return { ids: idsFromCursor.slice(0, limit), hasMore: idsFromCursor.length > limit };
}
