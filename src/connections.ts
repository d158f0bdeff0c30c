// The gateway's connections through a shutdown: those that never sent a request are closed as the
// close begins, requests that arrive meanwhile are refused (app.ts answers them 503), and the
// deadline's cut is known, so its requests are recorded as the gateway's doing. And at any time: a
// pipelined request's response closes with its connection, as every other response does.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';

export function watchConnections(app: FastifyInstance): { readonly closing: boolean; readonly cutting: boolean } {
  // Connections that never sent a request (a client pool's spare connection, a load balancer's
  // pre-connect): Node's server.close() closes idle keep-alive connections, those that finished a
  // request, but not these, so a close (a rolling restart) would wait for their clients until the
  // shutdown deadline. Nothing was asked on them: they are closed as the close begins. One accepted
  // after that (a load balancer pre-connects just then) is closed as it arrives.
  const silent = new Set<Socket>();
  let closing = false;
  app.server.on('connection', (socket: Socket) => {
    if (closing) return void socket.destroy();
    silent.add(socket);
    socket.once('close', () => silent.delete(socket));
  });
  app.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    silent.delete(req.socket);
    // Queued behind another response on its connection (HTTP/1.1 pipelining): see closesWithConnection.
    if (res.socket === null) closesWithConnection(req.socket, res);
  });
  app.addHook('preClose', async () => {
    closing = true;
    for (const socket of silent) socket.destroy();
  });

  // The shutdown deadline (server.ts): the connections still open are cut, and their requests are
  // recorded as cut at shutdown (errorCode cut_at_shutdown), not as their clients hanging up.
  let cutting = false;
  app.decorate('cutOpenConnections', () => {
    cutting = true;
    app.server.closeAllConnections();
  });

  return {
    /** The close has begun: a request that arrives now is refused. */
    get closing() {
      return closing;
    },
    /** The shutdown deadline cut the connections still open. */
    get cutting() {
      return cutting;
    },
  };
}

/**
 * Node's server emits 'close' only on the response that holds the connection: one queued behind it
 * (a pipelined request) gets none when the client hangs up, ever. The gateway learns that a client
 * left, and writes a request's log line and usage event, on 'close': the queued request went on
 * upstream, billed and never recorded, and kept the shutdown waiting for its accounting until the
 * deadline. Such a response is closed here as Node closes the one on the connection: destroyed,
 * then 'close'. One that got the connection meanwhile, or finished on it, is Node's to close.
 */
function closesWithConnection(socket: Socket, res: ServerResponse): void {
  // One listener per connection, however deep its pipeline (one each made Node warn of a leak).
  let queued = queuedOn.get(socket);
  if (!queued) {
    const responses = new Set<ServerResponse>();
    queuedOn.set(socket, (queued = responses));
    socket.once('close', () => {
      for (const waiting of responses) {
        if (waiting.socket !== null || waiting.writableFinished) continue;
        waiting.destroy();
        waiting.emit('close');
      }
    });
  }
  const set = queued;
  set.add(res);
  res.once('close', () => set.delete(res));
}

/** The responses queued behind another on each connection (pipelined), until each closes. */
const queuedOn = new WeakMap<Socket, Set<ServerResponse>>();
