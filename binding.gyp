# The one native addon: native/malloc_trim.c (src/native-memory.ts loads it; why in both files).
{
  "targets": [
    { "target_name": "malloc_trim", "sources": ["native/malloc_trim.c"] }
  ]
}
