// Coalesces the Redis commands of one event-loop turn into one socket write.
//
// Each request makes a few Redis calls, and under load dozens of requests reach the same step in
// the same turn. Written one by one, every command is a write(2); on loopback the sender's write
// also runs the receiver's TCP processing and wakes it, so those writes were the largest single
// item of the gateway's CPU profile (see BENCHMARKS.md). ioredis's own autopipelining flushes on
// process.nextTick, i.e. within one callback, which misses commands issued by the other requests
// of the same turn. Corking the socket at the first command of a turn and uncorking it in
// setImmediate (the same turn's check phase) sends them all in one writev: no command waits for
// a later turn, and the order of commands on the connection is unchanged.
import type { Socket } from 'node:net';
import type { Redis } from 'ioredis';

export function coalesceWrites(client: Redis): void {
  const send = client.sendCommand.bind(client);
  let corked: Socket | null = null;
  client.sendCommand = (command, stream) => {
    // Only once connected and ready: until then ioredis queues commands itself, or runs its own
    // handshake (AUTH, ready check), which must not wait.
    const socket = client.stream as Socket | undefined;
    if (corked === null && client.status === 'ready' && socket && !socket.destroyed) {
      corked = socket;
      socket.cork();
      setImmediate(() => {
        corked = null;
        socket.uncork();
      });
    }
    return send(command, stream);
  };
}
