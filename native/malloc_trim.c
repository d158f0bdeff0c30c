// trim(): asks glibc's malloc to give the freed memory it keeps back to the OS (malloc_trim(0)).
//
// Why native code: Node has no way to call a C library function. glibc returns freed memory on its
// own only from the top of a heap, never from pages in the middle of one, so after the first seconds
// of load (V8's compiler threads allocate and free hundreds of MB of zones) up to ~30 MB of freed,
// fragmented pages can stay resident for good. malloc_trim(0) also releases those (madvise).
// trim() returns true when memory was released. Built against another C library (musl, macOS),
// which has no malloc_trim, the module exports nothing.
#include <node_api.h>
#include <stdlib.h>  // any libc header defines __GLIBC__ on glibc
#if defined(__GLIBC__)
#include <malloc.h>

static napi_value Trim(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, malloc_trim(0) == 1, &result);
  return result;
}
#endif

NAPI_MODULE_INIT() {
#if defined(__GLIBC__)
  napi_value fn;
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, Trim, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "trim", fn) != napi_ok) return NULL;
#endif
  return exports;
}
