#!/usr/bin/env python3
"""A TLS (and SASL) front for a plaintext Kafka broker on loopback, for karafka-rs' tests.

Tansu 0.6 takes --cert/--key but never wraps its connections in TLS, and its memory storage
keeps no SCRAM users, so the broker tests of TLS and SASL put this gateway in front of it:

    secure-gateway.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT \
        --cert broker.pem --key broker.key [--users FILE]

- Every client connection is TLS (Python's ssl module, OpenSSL): a plaintext client fails its
  handshake and is disconnected.
- With --users (lines `name:password`), the client must authenticate before anything but
  ApiVersions reaches the broker: SaslHandshake v1 then SaslAuthenticate v0-2 with
  SCRAM-SHA-256, SCRAM-SHA-512 (RFC 5802 / RFC 7677, 4096 iterations), PLAIN (RFC 4616) or
  OAUTHBEARER (RFC 7628: the bearer token must equal the `oauth:` line's value; no JWT is
  parsed). A wrong password or token gets SASL_AUTHENTICATION_FAILED (58) and the connection
  is closed, as Kafka does.
- After that (or at once without --users) bytes are relayed unchanged both ways. The broker
  behind must advertise this gateway's address (--advertised-listener-url), so clients come
  back through it.

Standard library only. Prints `ready on HOST:PORT` when it listens.
"""

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import ssl
import struct
import sys

API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
SCRAM_ITERATIONS = 4096
SCRAM = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "OAUTHBEARER"]


def log(*parts):
    print("secure-gateway:", *parts, file=sys.stderr, flush=True)


class Reader:
    """Reads Kafka primitive types from one request body."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated request")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int16(self):
        return struct.unpack(">h", self.take(2))[0]

    def int32(self):
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self):
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def string(self):
        n = self.int16()
        return None if n < 0 else self.take(n).decode()

    def bytes32(self):
        n = self.int32()
        return b"" if n < 0 else self.take(n)

    def compact_bytes(self):
        n = self.uvarint()
        return b"" if n == 0 else self.take(n - 1)

    def compact_string(self):
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def uvarint(n):
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def kafka_string(s):
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def compact_string(s):
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


class Scram:
    """The server side of one SCRAM exchange (RFC 5802)."""

    def __init__(self, mechanism, users):
        self.hash = SCRAM[mechanism]
        self.mechanism = mechanism
        self.users = users
        self.step = 0

    def hmac(self, key, msg):
        return hmac.new(key, msg, self.hash).digest()

    def respond(self, message):
        """Returns (reply bytes or None, error text or None)."""
        text = message.decode()
        if self.step == 0:
            self.step = 1
            # client-first: gs2-header "n,," (or "n,a=authzid,") then the bare part.
            parts = text.split(",", 2)
            if len(parts) < 3 or parts[0] not in ("n", "y"):
                return None, "malformed client-first message"
            self.gs2 = parts[0] + "," + parts[1] + ","
            self.client_first_bare = parts[2]
            attrs = dict(a.split("=", 1) for a in self.client_first_bare.split(",") if "=" in a)
            self.user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
            nonce = attrs.get("r")
            if not nonce:
                return None, "client-first message without a nonce"
            self.nonce = nonce + base64.b64encode(os.urandom(18)).decode()
            # An unknown user gets a made-up salt and fails at the proof, like a wrong
            # password: the reply does not tell which names exist.
            password = self.users.get(self.user)
            self.salt = hashlib.sha256(b"karafka-salt:" + self.user.encode()).digest()[:16]
            self.salted = (
                hashlib.pbkdf2_hmac(
                    self.hash().name, password.encode(), self.salt, SCRAM_ITERATIONS
                )
                if password is not None
                else None
            )
            self.server_first = "r={},s={},i={}".format(
                self.nonce, base64.b64encode(self.salt).decode(), SCRAM_ITERATIONS
            )
            return self.server_first.encode(), None
        if self.step == 1:
            self.step = 2
            without_proof, _, proof = text.rpartition(",p=")
            attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
            if attrs.get("r") != self.nonce:
                return None, "nonce mismatch"
            if base64.b64decode(attrs.get("c", "")) != self.gs2.encode():
                return None, "channel binding mismatch"
            if self.salted is None:
                return None, "invalid credentials"
            auth_message = ",".join(
                [self.client_first_bare, self.server_first, without_proof]
            ).encode()
            client_key = self.hmac(self.salted, b"Client Key")
            stored_key = self.hash(client_key).digest()
            signature = self.hmac(stored_key, auth_message)
            given = base64.b64decode(proof)
            if len(given) != len(signature):
                return None, "invalid credentials"
            recovered = bytes(a ^ b for a, b in zip(given, signature))
            if not hmac.compare_digest(self.hash(recovered).digest(), stored_key):
                return None, "invalid credentials"
            server_key = self.hmac(self.salted, b"Server Key")
            server_signature = self.hmac(server_key, auth_message)
            self.done = True
            return ("v=" + base64.b64encode(server_signature).decode()).encode(), None
        return None, "unexpected SCRAM message"


class Connection:
    def __init__(self, args, users, token, reader, writer):
        self.args, self.users, self.token = args, users, token
        self.reader, self.writer = reader, writer
        self.mechanism = None
        self.exchange = None
        self.authenticated = users is None

    async def frame(self, reader):
        head = await reader.readexactly(4)
        (size,) = struct.unpack(">i", head)
        if size < 0 or size > 100 * 1024 * 1024:
            raise ValueError(f"bad frame size {size}")
        return head + await reader.readexactly(size)

    def reply(self, correlation_id, body, flexible=False):
        header = struct.pack(">i", correlation_id) + (uvarint(0) if flexible else b"")
        payload = header + body
        self.writer.write(struct.pack(">i", len(payload)) + payload)

    async def run(self):
        host, port = self.args.upstream.rsplit(":", 1)
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            # Until authenticated, read frames one by one; ApiVersions goes to the broker.
            while not self.authenticated:
                frame = await self.frame(self.reader)
                r = Reader(frame[4:])
                api_key, api_version, correlation_id = r.int16(), r.int16(), r.int32()
                if api_key == API_VERSIONS:
                    up_writer.write(frame)
                    await up_writer.drain()
                    self.writer.write(await self.frame(up_reader))
                    await self.writer.drain()
                    continue
                r.string()  # client id
                if api_key == API_SASL_HANDSHAKE and api_version == 1:
                    mechanism = r.string()
                    ok = mechanism in MECHANISMS
                    body = struct.pack(">h", 0 if ok else UNSUPPORTED_SASL_MECHANISM)
                    body += struct.pack(">i", len(MECHANISMS))
                    body += b"".join(kafka_string(m) for m in MECHANISMS)
                    self.reply(correlation_id, body)
                    await self.writer.drain()
                    if not ok:
                        log(f"refused mechanism {mechanism!r}")
                        return
                    self.mechanism = mechanism
                    self.exchange = Scram(mechanism, self.users) if mechanism in SCRAM else None
                    continue
                if api_key == API_SASL_AUTHENTICATE and api_version in (0, 1, 2):
                    flexible = api_version == 2
                    if flexible:
                        r.tagged_fields()
                    token = r.compact_bytes() if flexible else r.bytes32()
                    try:
                        reply, error = self.authenticate(token)
                    except (ValueError, UnicodeDecodeError, binascii.Error) as e:
                        reply, error = None, f"malformed message: {e}"
                    code, message = 0, None
                    if error is not None and self.mechanism is None:
                        code, message = ILLEGAL_SASL_STATE, "SaslAuthenticate before SaslHandshake"
                    elif error is not None:
                        code = SASL_AUTHENTICATION_FAILED
                        message = (
                            "Authentication failed during authentication due to invalid "
                            f"credentials with SASL mechanism {self.mechanism}"
                        )
                    if error is not None:
                        log(f"authentication with {self.mechanism} failed: {error}")
                    reply = reply or b""
                    body = struct.pack(">h", code)
                    if flexible:
                        body += compact_string(message) + uvarint(len(reply) + 1) + reply
                    else:
                        body += kafka_string(message) + struct.pack(">i", len(reply)) + reply
                    if api_version >= 1:
                        body += struct.pack(">q", 0)
                    if flexible:
                        body += uvarint(0)
                    self.reply(correlation_id, body, flexible)
                    await self.writer.drain()
                    if error is not None:
                        return
                    continue
                log(f"request {api_key} v{api_version} before authentication: closing")
                return
            await asyncio.gather(
                relay(self.reader, up_writer), relay(up_reader, self.writer)
            )
        except (asyncio.IncompleteReadError, OSError, ValueError) as e:
            if not isinstance(e, asyncio.IncompleteReadError):
                log(f"connection closed: {e}")
        finally:
            for w in (up_writer, self.writer):
                if w is not None:
                    w.close()

    def authenticate(self, token):
        if self.mechanism is None:
            return None, "SaslAuthenticate before SaslHandshake"
        if self.mechanism == "PLAIN":
            parts = token.split(b"\0")
            if len(parts) != 3:
                return None, "malformed PLAIN token"
            user, password = parts[1].decode(), parts[2].decode()
            if self.users.get(user) is None or not hmac.compare_digest(
                self.users[user].encode(), password.encode()
            ):
                return None, "invalid credentials"
            self.authenticated = True
            return b"", None
        if self.mechanism == "OAUTHBEARER":
            # gs2 header, then \x01-separated key=value pairs, ending in \x01\x01.
            _, _, kvs = token.decode().partition(",\x01")
            pairs = dict(kv.split("=", 1) for kv in kvs.split("\x01") if "=" in kv)
            bearer = pairs.get("auth", "")
            expected = self.token
            if not bearer.startswith("Bearer ") or expected is None or not hmac.compare_digest(
                bearer[len("Bearer ") :].encode(), expected.encode()
            ):
                return None, "invalid token"
            self.authenticated = True
            return b"", None
        reply, error = self.exchange.respond(token)
        if error is None and getattr(self.exchange, "done", False):
            self.authenticated = True
        return reply, error


async def relay(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def read_users(path):
    """`name:password` lines; the `oauth:` line is the OAUTHBEARER token, not a user."""
    users, token = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, password = line.partition(":")
                if name == "oauth":
                    token = password
                else:
                    users[name] = password
    return users, token


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--users")
    args = parser.parse_args()
    users, token = read_users(args.users) if args.users else (None, None)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)

    async def handle(reader, writer):
        await Connection(args, users, token, reader, writer).run()

    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), ssl=context)
    mode = "TLS + SASL (" + ", ".join(MECHANISMS) + ")" if users is not None else "TLS"
    print(f"ready on {args.listen}: {mode} in front of {args.upstream}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
