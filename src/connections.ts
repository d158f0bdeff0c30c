// The gateway's connections through a shutdown: those that never sent a request are closed as the
// close begins, requests that arrive meanwhile are refused (app.ts answers them 503), and the
// deadline's cut is known, so its requests are recorded as the gateway's doing.
import type { IncomingMessage } from 'node:http';
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
  app.server.on('request', (req: IncomingMessage) => silent.delete(req.socket));
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
