#!/usr/bin/env node
// s3rver.js DIR BUCKET ACCESS_KEY SECRET_KEY [REGION] - s3rver (an S3 server that keeps objects
// in files) on 127.0.0.1 with a free port (S3RVER_PORT to choose it; HTTPS with S3RVER_TLS=DIR
// holding key.pem and cert.pem), for tests/s3_spec.lua. It keeps its objects in
// DIR/data, writes its port to DIR/port when ready, and stops on SIGTERM. Only ACCESS_KEY is
// known to it. Around s3rver (which is not changed):
//   - s3rver 3.7.1 checks a V4 request's access key but not its signature ("unimplemented" in
//     its authentication.js): every signed request is signed again here with aws4 (a SigV4
//     signer bkr did not write) from the headers the request says it signed and the secret key;
//     a different signature gets 403 SignatureDoesNotMatch, as S3 answers;
//   - every request is logged to DIR/requests.log, one JSON line {method, url, headers}, as it
//     arrives: the spec reads the headers bkr sent (Object Lock) and counts attempts (retries);
//   - faults on demand: a file DIR/fault holding "STATUS COUNT METHOD" (e.g. "500 1 PUT") makes
//     the next COUNT requests of METHOD get STATUS with an S3 error document instead of reaching
//     s3rver; "drop COUNT GET BYTES" cuts the connection of the next COUNT GETs after BYTES
//     bytes of the object; "stall COUNT GET BYTES" sends BYTES and then nothing, connection open;
//     "stall COUNT PUT" reads the next COUNT PUTs and never answers them (a request the client
//     must give up on, or be interrupted in);
//   - AbortMultipartUpload, which s3rver 3.7.1 does not implement (it answers 405): the upload's
//     directory in s3rver's own store is removed and 204 answered, as S3 does (404 NoSuchUpload
//     when there is no such upload), later requests for it get 404 NoSuchUpload, and the
//     directory is swept again a second later: s3rver writes out the part of a request whose
//     client hung up mid-body, which S3 drops.
//   - ListMultipartUploads (GET ?uploads), which s3rver 3.7.1 answers 501: the open uploads in
//     s3rver's store (each upload's directory keeps its key), filtered by prefix, one page, as S3
//     lists them (key order); Initiated is the time the upload's directory was made.
//   - encoding-type=url on ListObjectsV2 and ListMultipartUploads, which s3rver ignores: the keys
//     of the answer URL-encoded (a space as "+") and <EncodingType>url</EncodingType> added, as
//     S3 answers; without it a key holding a control character makes the XML unreadable.
//   - Object Lock retention, which s3rver ignores: the x-amz-object-lock-mode and
//     -retain-until-date of a PutObject or CreateMultipartUpload are remembered per key (in
//     DIR/locks.json), returned on HEAD as S3 returns them, and a DELETE of the key before that
//     date gets 403 AccessDenied, as S3 answers it.
'use strict';
const fs = require('fs');
const path = require('path');
const { Transform } = require('stream');

const [dir, bucket, accessKey, secretKey, region = 'us-east-1'] = process.argv.slice(2);
if (!secretKey) {
  console.error('usage: s3rver.js DIR BUCKET ACCESS_KEY SECRET_KEY');
  process.exit(2);
}
const modules = path.join(__dirname, '..', 'node', 'node_modules');
const S3rver = require(path.join(modules, 's3rver'));
const { DUMMY_ACCOUNT } = require(path.join(modules, 's3rver', 'lib', 'models', 'account'));
const aws4 = require(path.join(modules, 'aws4'));
const he = require(path.join(modules, 'he'));

DUMMY_ACCOUNT.createKeyPair(accessKey, secretKey);
DUMMY_ACCOUNT.revokeAccessKey('S3RVER'); // only the test's keys sign

const data = path.join(dir, 'data');
fs.mkdirSync(data, { recursive: true });
const server = new S3rver({
  address: '127.0.0.1',
  port: Number(process.env.S3RVER_PORT || 0), // a restart comes back on its old port
  silent: !process.env.S3RVER_VERBOSE,
  // virtual-host style: BUCKET.s3.localhost (libcurl resolves *.localhost to loopback itself)
  serviceEndpoint: 'localhost',
  directory: data,
  configureBuckets: [{ name: bucket, configs: [] }],
  // HTTPS when S3RVER_TLS names a directory with key.pem and cert.pem
  ...(process.env.S3RVER_TLS ? {
    key: fs.readFileSync(path.join(process.env.S3RVER_TLS, 'key.pem')),
    cert: fs.readFileSync(path.join(process.env.S3RVER_TLS, 'cert.pem')),
  } : {}),
});

const log = fs.openSync(path.join(dir, 'requests.log'), 'a');
const aborted = new Set();

function takeFault(method) {
  const file = path.join(dir, 'fault');
  let text;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    return null;
  }
  const [what, count, m, bytes] = text.split(/\s+/);
  if (m !== method || Number(count) < 1) return null;
  if (Number(count) === 1) fs.unlinkSync(file);
  else fs.writeFileSync(file, `${what} ${Number(count) - 1} ${m}${bytes ? ' ' + bytes : ''}\n`);
  return { what, bytes: Number(bytes || 0) };
}

function xmlError(ctx, status, code) {
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code>` +
    `<Message>${code} (tests/support/s3rver.js)</Message></Error>`;
}

// The signature aws4 computes for this request, from the headers it says it signed.
function signatureMatches(ctx) {
  const auth = ctx.headers.authorization || '';
  const m = /^AWS4-HMAC-SHA256 Credential=[^,]+, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$/.exec(auth);
  if (!m) return false;
  const headers = {};
  for (const name of m[1].split(';')) if (name !== 'host') headers[name] = ctx.headers[name] || '';
  const signed = aws4.sign({ host: ctx.headers.host, method: ctx.method, path: ctx.url, service: 's3', region, headers },
    { accessKeyId: accessKey, secretAccessKey: secretKey });
  return signed.headers.Authorization.endsWith(`SignedHeaders=${m[1]}, Signature=${m[2]}`);
}

const locksFile = path.join(dir, 'locks.json');
function locks() {
  try { return JSON.parse(fs.readFileSync(locksFile, 'utf8')); } catch (e) { return {}; }
}
// The object's key, as S3 has it, from a path-style or virtual-host URL.
function keyOf(ctx) {
  const p = decodeURIComponent(new URL(ctx.url, 'http://x').pathname);
  return ctx.headers.host.startsWith(bucket + '.') ? p.slice(1) : p.slice(bucket.length + 2);
}

function xmlText(text) {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

// A key as S3 encodes it for encoding-type=url.
function urlEncoded(key) {
  return encodeURIComponent(key).replace(/%20/g, '+');
}

// A listing's XML with its keys URL-encoded and its EncodingType said.
function encodeListing(xml, root) {
  return xml.replace(new RegExp(`(<${root}[^>]*>)`), '$1<EncodingType>url</EncodingType>')
    .replace(/<Key>([\s\S]*?)<\/Key>/g, (m, key) => `<Key>${urlEncoded(he.decode(key))}</Key>`);
}

function listUploads(ctx, prefix, encode) {
  const uploads = server.store.getResourcePath(bucket, undefined, 'uploads');
  const open = [];
  for (const id of fs.existsSync(uploads) ? fs.readdirSync(uploads) : []) {
    if (aborted.has(id)) continue;
    let key;
    try { key = fs.readFileSync(path.join(uploads, id, 'key'), 'utf8'); } catch (e) { continue; }
    if (!key.startsWith(prefix)) continue;
    open.push({ key, id, initiated: fs.statSync(path.join(uploads, id)).birthtime || fs.statSync(path.join(uploads, id)).mtime });
  }
  open.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  ctx.status = 200;
  ctx.type = 'application/xml';
  ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
    `<Bucket>${bucket}</Bucket><Prefix>${xmlText(prefix)}</Prefix><MaxUploads>1000</MaxUploads>` +
    '<IsTruncated>false</IsTruncated>' +
    (encode ? '<EncodingType>url</EncodingType>' : '') +
    open.map(u => `<Upload><Key>${encode ? urlEncoded(u.key) : xmlText(u.key)}</Key><UploadId>${u.id}</UploadId>` +
      `<Initiated>${u.initiated.toISOString()}</Initiated></Upload>`).join('') +
    '</ListMultipartUploadsResult>';
}

server.middleware.unshift(async (ctx, next) => {
  fs.writeSync(log, JSON.stringify({ method: ctx.method, url: ctx.url, headers: ctx.headers,
    port: ctx.req.socket.remotePort }) + '\n');
  if (ctx.headers.authorization && ctx.headers.authorization.includes(`Credential=${accessKey}/`) &&
      !signatureMatches(ctx)) {
    ctx.req.resume();
    return xmlError(ctx, 403, 'SignatureDoesNotMatch');
  }
  const fault = takeFault(ctx.method);
  if (fault && fault.what === 'stall' && ctx.method === 'PUT') {
    ctx.req.resume();
    return new Promise(() => {}); // never answered; the client's timeout or an interrupt ends it
  }
  if (fault && /^\d+$/.test(fault.what)) {
    const codes = { 500: 'InternalError', 503: 'SlowDown', 429: 'SlowDown', 400: 'BadRequest' };
    ctx.req.resume(); // read and drop the body
    return xmlError(ctx, Number(fault.what), codes[fault.what] || 'InternalError');
  }
  const url = new URL(ctx.url, 'http://x');
  const uploadId = url.searchParams.get('uploadId');
  if (uploadId !== null && aborted.has(uploadId)) {
    ctx.req.resume();
    return xmlError(ctx, 404, 'NoSuchUpload'); // S3: parts of an aborted upload are refused
  }
  if (ctx.method === 'DELETE' && uploadId !== null) {
    const uploads = server.store.getResourcePath(bucket, undefined, 'uploads');
    const where = path.join(uploads, uploadId);
    if (!/^[0-9a-f]+$/.test(uploadId) || !fs.existsSync(where)) return xmlError(ctx, 404, 'NoSuchUpload');
    aborted.add(uploadId);
    fs.rmSync(where, { recursive: true, force: true });
    // A part whose client went away mid-body is still written by s3rver (S3 would drop it): sweep
    // again once such a request has had time to end.
    for (const ms of [500, 2000]) setTimeout(() => fs.rmSync(where, { recursive: true, force: true }), ms);
    ctx.status = 204;
    return;
  }
  if (ctx.method === 'GET' && url.searchParams.has('uploads') && keyOf(ctx) === '') {
    return listUploads(ctx, url.searchParams.get('prefix') || '', url.searchParams.get('encoding-type') === 'url');
  }
  const lockUntil = ctx.headers['x-amz-object-lock-retain-until-date'];
  const creating = (ctx.method === 'PUT' && !url.searchParams.has('partNumber')) ||
    (ctx.method === 'POST' && url.searchParams.has('uploads'));
  const held = locks()[keyOf(ctx)];
  if (ctx.method === 'DELETE' && uploadId === null && held && Date.parse(held.until) > Date.now()) {
    return xmlError(ctx, 403, 'AccessDenied'); // S3: a locked version cannot be deleted before its date
  }
  await next();
  if (ctx.method === 'GET' && url.searchParams.get('encoding-type') === 'url' && typeof ctx.body === 'string' &&
      ctx.body.includes('<ListBucketResult')) {
    ctx.body = encodeListing(ctx.body, 'ListBucketResult');
  }
  if (creating && lockUntil && ctx.status < 300) {
    const all = locks();
    all[keyOf(ctx)] = { mode: ctx.headers['x-amz-object-lock-mode'], until: lockUntil };
    fs.writeFileSync(locksFile, JSON.stringify(all));
  }
  if (ctx.method === 'HEAD' && held && ctx.status < 300) {
    ctx.set('x-amz-object-lock-mode', held.mode);
    ctx.set('x-amz-object-lock-retain-until-date', held.until);
  }
  if (fault && (fault.what === 'drop' || fault.what === 'stall') && ctx.body && typeof ctx.body.pipe === 'function') {
    // The response keeps its Content-Length, as S3's does; the connection ends after BYTES.
    const length = ctx.length;
    let sent = 0;
    const socket = ctx.req.socket;
    ctx.body = ctx.body.pipe(new Transform({
      transform(chunk, encoding, callback) {
        if (sent + chunk.length <= fault.bytes) {
          sent += chunk.length;
          return callback(null, chunk);
        }
        this.push(chunk.subarray(0, fault.bytes - sent));
        sent = fault.bytes;
        // and never calls back: the rest never comes; drop also hangs up, stall keeps the
        // connection open and silent (until the client gives up)
        if (fault.what === 'drop') setTimeout(() => socket.destroy(), 200);
      },
    }));
    ctx.length = length;
  }
});

// s3rver writes a part to a file it opens after its directory was made: a part in flight when
// its upload is aborted fails there, with an 'error' event nobody listens to. That part's failure
// is what S3 does too; it must not bring the server down. Anything else still does.
process.on('uncaughtException', err => {
  if (err.code === 'ENOENT' && [...aborted].some(id => String(err.path).includes(`/${id}/`))) {
    console.error(`s3rver.js: a part of an aborted upload was not written: ${err.path}`);
    return;
  }
  console.error(err);
  process.exit(70);
});

server.run().then(address => {
  fs.writeFileSync(path.join(dir, 'port.tmp'), `${address.port}\n`);
  fs.renameSync(path.join(dir, 'port.tmp'), path.join(dir, 'port'));
});
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
