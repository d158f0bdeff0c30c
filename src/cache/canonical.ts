// Canonical JSON: the same value always serialises to the same string, whatever its key order.

/**
 * JSON with object keys sorted at every depth; arrays keep their order (it is meaningful). The
 * value of a field named in `orderedFields` is written as it is, its keys in their order: where
 * that order means something (a JSON schema's properties are generated in that order).
 * Built with one string and plain loops: it runs on every cacheable request, and the
 * map/filter/join version cost twice as much (most of it garbage).
 */
export function canonicalJson(value: unknown, orderedFields?: ReadonlySet<string>): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) {
    // Numbers, strings, booleans and nulls alone (token ids, stop lists) are canonical as JSON
    // writes them, and the engine writes them in one call: 2.5M numbers took ~300 ms one by one.
    if (allPrimitive(value)) return JSON.stringify(value);
    let out = '[';
    for (let i = 0; i < value.length; i++) out += (i === 0 ? '' : ',') + canonicalJson(value[i], orderedFields);
    return out + ']';
  }
  const object = value as Record<string, unknown>;
  const keys = sortInPlace(Object.keys(object));
  let out = '{';
  for (const key of keys) {
    const field = object[key];
    if (field === undefined) continue;
    out += (out.length === 1 ? '' : ',') + JSON.stringify(key) + ':' + (orderedFields?.has(key) ? JSON.stringify(field) : canonicalJson(field, orderedFields));
  }
  return out + '}';
}

function allPrimitive(values: unknown[]): boolean {
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v !== null && typeof v === 'object') return false;
  }
  return true;
}

/** Up to this many keys an insertion sort is used; past it its quadratic cost would show. */
const INSERTION_SORT_MAX = 32;

/**
 * The keys in the order of Array.prototype.sort() (UTF-16 code units), sorted in place by
 * insertion: a request's objects have a handful of keys, and V8's sort allocates a work copy of
 * every array it sorts (~3 KB per request, for nothing). An object with more keys (any client can
 * send one: 150,000 keys took 77 s by insertion, with the event loop blocked) gets V8's sort.
 */
function sortInPlace(keys: string[]): string[] {
  if (keys.length > INSERTION_SORT_MAX) return keys.sort();
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i]!;
    let j = i - 1;
    while (j >= 0 && keys[j]! > key) {
      keys[j + 1] = keys[j]!;
      j--;
    }
    keys[j + 1] = key;
  }
  return keys;
}
