// Forwards connections from one socket to another, byte for byte (HTTP and WebSocket alike):
//
//   node bridge.mjs tcp:127.0.0.1:56150 unix:/tmp/x/playground.sock   (outside the namespace)
//   node bridge.mjs unix:/tmp/x/playground.sock tcp:127.0.0.1:56150   (inside it)
//
// A unix socket is a file, so it crosses network namespaces: this is how a browser on the
// machine reaches the Playground that runs in a loopback-only namespace, without giving the
// Playground any network of its own.
import net from 'node:net';
import { rmSync } from 'node:fs';

function address(spec) {
  if (spec.startsWith('unix:')) return { path: spec.slice(5) };
  const m = /^tcp:(.+):(\d+)$/.exec(spec);
  if (!m) throw new Error(`not tcp:HOST:PORT or unix:PATH: ${spec}`);
  return { host: m[1], port: Number(m[2]) };
}

const [from, to] = process.argv.slice(2).map(address);
if (!from || !to) {
  console.error('usage: node bridge.mjs FROM TO   (each tcp:HOST:PORT or unix:PATH)');
  process.exit(2);
}
if (from.path) rmSync(from.path, { force: true });

const server = net.createServer((client) => {
  const upstream = net.connect(to);
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
});
server.on('error', (error) => {
  console.error(`bridge: ${error.message}`);
  process.exit(1);
});
server.listen(from.path ? { path: from.path } : { host: from.host, port: from.port });
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
