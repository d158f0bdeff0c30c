// Facts about the machine the tests run on.

/** True on Linux with glibc, where the malloc_trim addon does its work (src/native-memory.ts). */
export const onLinuxGlibc = ((): boolean => {
  if (process.platform !== 'linux') return false;
  const header = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header;
  return Boolean(header?.glibcVersionRuntime);
})();
