// The original tutorial's server behaviour, over TLS: greet each client with
// "Hello\n", answer every chunk received with "H:M:S - server reply: <chunk>\n"
// (local time, not zero-padded). Prints the port it listens on.
// Usage: node tls_echo_server.js CERT KEY
'use strict';
const fs = require('fs');
const tls = require('tls');

const [cert, key] = process.argv.slice(2);
const server = tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (socket) => {
  socket.write('Hello\n');
  socket.on('data', (chunk) => {
    const now = new Date();
    const stamp = `${now.getHours()}:${now.getMinutes()}:${now.getSeconds()}`;
    socket.write(`${stamp} - server reply: ${chunk}\n`);
  });
  socket.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
