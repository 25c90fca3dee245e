#!/usr/bin/env node
// An integrator's backend for kaskade, to copy from: it serves a page that
// uses kaskade.js, relays that page's signalling over a WebSocket to the
// router's gRPC API (a stock client: @grpc/grpc-js + @grpc/proto-loader),
// and pushes the room's events (WatchEvents) to the page.
//
//   npm ci && KASKADE_CONTROL=127.0.0.1:50051 node server.mjs
//   open http://127.0.0.1:3000/?room=demo in two tabs
//
// Environment:
//   KASKADE_CONTROL  the router's gRPC address (default 127.0.0.1:50051)
//   KASKADE_HTTP     the router's HTTP listener, where kaskade.js is served
//                    (default 127.0.0.1:8080; copy the file instead in production)
//   KASKADE_PROTO    the folder of kaskade's .proto files (default: this repository's)
//   HOST, PORT       where this backend listens (default 127.0.0.1:3000; PORT=0: any)
//
// What a real backend adds: authentication of its users, its own rule for
// who may join which room, and TLS. Everything the browser may do is
// checked here: a page can only join the room of its own connection and
// act on its own session.

import http from 'node:http';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { WebSocketServer } from 'ws';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CONTROL = process.env.KASKADE_CONTROL || '127.0.0.1:50051';
const KASKADE_HTTP = process.env.KASKADE_HTTP || '127.0.0.1:8080';
const PROTO_DIR = process.env.KASKADE_PROTO || path.resolve(HERE, '../../../protocol/proto');
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT ?? 3000);
const ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

// The API, in the protobuf JSON mapping kaskade.js reads: camelCase names,
// enums by name, 64-bit integers as strings, a oneof's field as its key.
const def = protoLoader.loadSync(['kaskade/v1/room.proto', 'kaskade/v1/session.proto'], {
  includeDirs: [PROTO_DIR],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { v1 } = grpc.loadPackageDefinition(def).kaskade;
const rooms = new v1.RoomService(CONTROL, grpc.credentials.createInsecure());
const sessions = new v1.SessionService(CONTROL, grpc.credentials.createInsecure());

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10_000 }, (err, resp) => {
      if (err) {
        const e = new Error(err.details || err.message);
        e.code = grpc.status[err.code] || String(err.code);
        reject(e);
      } else {
        resolve(resp);
      }
    });
  });
}

// What a page may ask for, and how each call is checked.
const METHODS = new Set(['CreateSession', 'Renegotiate', 'Subscribe', 'Unsubscribe', 'SetAnswer', 'UpdateSubscription', 'CloseSession']);

async function ensureRoom(roomId) {
  try {
    await call(rooms, 'CreateRoom', { roomId });
  } catch (e) {
    if (e.code !== 'ALREADY_EXISTS') throw e;
  }
}

/** One browser connection: one participant in one room. */
async function onConnection(ws, url) {
  const roomId = url.searchParams.get('room') || '';
  const participantId = url.searchParams.get('name') || '';
  if (!ID_RE.test(roomId) || !ID_RE.test(participantId)) {
    ws.close(4000, 'room and name: 1-128 letters, digits, - _ . :');
    return;
  }
  const send = (msg) => {
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg));
  };
  let sessionId = null;
  let watch = null;

  ws.on('message', async (data) => {
    let msg;
    try {
      msg = JSON.parse(String(data));
    } catch {
      return;
    }
    const { id, method } = msg;
    const request = { ...(msg.request || {}) };
    try {
      if (!METHODS.has(method)) throw Object.assign(new Error(`no method ${method}`), { code: 'UNIMPLEMENTED' });
      if (method === 'CreateSession') {
        if (sessionId) throw Object.assign(new Error('this connection has a session'), { code: 'ALREADY_EXISTS' });
        // The backend, not the page, decides the room and the identity.
        request.roomId = roomId;
        request.participantId = participantId;
        request.metadata = JSON.stringify({ joinedVia: 'example-backend' });
      } else if (request.sessionId !== sessionId) {
        throw Object.assign(new Error('not your session'), { code: 'PERMISSION_DENIED' });
      }
      const response = await call(sessions, method, request);
      if (method === 'CreateSession') sessionId = response.sessionId;
      if (method === 'CloseSession') sessionId = null;
      send({ id, response });
    } catch (e) {
      send({ id, error: { code: e.code || 'INTERNAL', message: e.message } });
    }
  });

  ws.on('close', () => {
    if (watch) watch.cancel();
    if (sessionId) call(sessions, 'CloseSession', { sessionId }).catch(() => {});
  });

  try {
    await ensureRoom(roomId);
    // Watch first, then take the room's state: nothing falls in between.
    watch = sessions.WatchEvents({ roomId });
    let first = true;
    watch.on('data', async (event) => {
      if (first) {
        first = false;
        const { room } = await call(rooms, 'GetRoom', { roomId });
        send({ room });
        return;
      }
      send({ event });
    });
    watch.on('error', (e) => {
      if (e.code !== grpc.status.CANCELLED) send({ error: { code: grpc.status[e.code], message: e.details } });
    });
  } catch (e) {
    send({ error: { code: e.code || 'INTERNAL', message: e.message } });
    ws.close(1011, 'cannot watch the room');
  }
}

let kaskadeJs = null;
async function getKaskadeJs() {
  if (!kaskadeJs) {
    const r = await fetch(`http://${KASKADE_HTTP}/kaskade.js`);
    if (!r.ok) throw new Error(`GET http://${KASKADE_HTTP}/kaskade.js: ${r.status}`);
    kaskadeJs = await r.text();
  }
  return kaskadeJs;
}

const page = readFileSync(path.join(HERE, 'index.html'));
const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, 'http://x');
  try {
    if (pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(page);
    } else if (pathname === '/kaskade.js') {
      const js = await getKaskadeJs();
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(js);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  } catch (e) {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(e.message);
  }
});
const wss = new WebSocketServer({ noServer: true, maxPayload: 512 * 1024 });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/ws') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, url));
});
server.listen(PORT, HOST, () => {
  const { address, port } = server.address();
  console.log(`example backend listening on http://${address}:${port}/ (kaskade at ${CONTROL})`);
});
