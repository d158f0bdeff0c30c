// Stop signals (SIGTERM, SIGINT) from the first moment of the process: server.ts imports this module
// before any other.
//
// Why so early: in a container Node runs as PID 1, and the kernel drops a signal that PID 1 has no
// handler for. A `docker stop` while the modules load (most of a start-up) would otherwise be lost,
// and the process would serve until killed. Until the server is up nothing is in flight, so a stop
// ends the start-up at once; then server.ts hands the signals to the graceful shutdown.

let onStop: (signal: NodeJS.Signals) => void = (signal) => {
  console.error(`${signal} during start-up: exiting`);
  process.exit(0);
};

for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => onStop(signal));

/** From now on a stop signal runs `handler` (the graceful shutdown) instead of ending the start-up. */
export function handleStopSignals(handler: (signal: NodeJS.Signals) => void): void {
  onStop = handler;
}
