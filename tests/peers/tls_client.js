// A Node.js TLS client: connects to PORT on 127.0.0.1, trusting the CA in
// CA_FILE and expecting a certificate for "localhost", sends each further
// argument as one line, prints every line received, and exits once it has
// the greeting and one line per message.
// Usage: node tls_client.js PORT CA_FILE MESSAGE...
'use strict';
const fs = require('fs');
const tls = require('tls');

const [port, caFile, ...messages] = process.argv.slice(2);
const socket = tls.connect({ host: '127.0.0.1', port: Number(port), ca: fs.readFileSync(caFile), servername: 'localhost' }, () => {
  for (const message of messages) socket.write(message + '\n');
});
let buffered = '';
let lines = 0;
socket.on('data', (chunk) => {
  buffered += chunk.toString('utf8');
  let end;
  while ((end = buffered.indexOf('\n')) >= 0) {
    process.stdout.write(buffered.slice(0, end + 1));
    buffered = buffered.slice(end + 1);
    lines += 1;
    if (lines === messages.length + 1) socket.end();
  }
});
socket.on('error', (error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
