"""`RedisStore`: stream checkpoints in Redis, owned by one worker at a time (DESIGN §9).

Per stream key, one Redis hash holds:
  owner        the epoch of the latest claim (`load`); only its writes are accepted
  seq, snap    the newest checkpoint: the seq of the last frame inside it, the snapshot
  pseq, psnap  the checkpoint before it

Why two checkpoints: a worker writes a checkpoint of frame s as it answers frame s. If
it dies before that answer reaches the client, the newest checkpoint is ahead of what
the client has received, and resuming from it would lose outputs; the previous one
(checkpoint_every frames older) is almost surely behind it, and the client replays.

Epochs come from one counter (`<prefix>epoch`) so that every claim, of any key, is newer
than every earlier one, including claims of a key deleted since: a stale owner can never
match a later owner's epoch. Ownership checks run inside Redis (Lua), so a check and
its write are one atomic step. One Redis server (with replicas for failover); Redis
Cluster is not supported, since a script touches a key and the counter.
"""
from __future__ import annotations

import hashlib

# KEYS[1] the stream's hash, KEYS[2] the epoch counter; ARGV[1] TTL in ms ('' for none).
# Returns the new epoch and both checkpoints (the caller picks one: Python compares seqs
# of up to 64 bits exactly, Lua's doubles do not).
_CLAIM = """
local epoch = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', epoch)
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local f = redis.call('HMGET', KEYS[1], 'seq', 'snap', 'pseq', 'psnap')
return {epoch, f[1], f[2], f[3], f[4]}
"""

# KEYS[1] the stream's hash; ARGV epoch, seq ('' for none), snapshot, TTL in ms ('' for none).
# 1: written, the newest checkpoint becoming the previous one; 0: refused, another owner
# claimed the key (or it was deleted) since `epoch`.
_SAVE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local cur = redis.call('HMGET', KEYS[1], 'seq', 'snap')
if cur[2] then redis.call('HSET', KEYS[1], 'pseq', cur[1], 'psnap', cur[2]) end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'snap', ARGV[3])
if ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

# KEYS[1] the stream's hash; ARGV[1] epoch. 1: deleted; 0: refused (not the owner).
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisStore:
    """Checkpoints of streams in one Redis server, for `Batcher(store=...)`.

    url: a redis:// (or rediss://, unix://) URL, as redis-py's `from_url` takes it.
    prefix: of every key this store writes, so services can share a server.
    ttl_s: a stream's checkpoints expire this long after their latest write or claim
      (None: they stay until the stream is closed). Streams whose clients never come
      back are otherwise kept forever.
    client: an existing `redis.asyncio.Redis` to use instead of `url`.

    Stream keys are str, bytes or int (kept apart: "1", b"1" and 1 are three streams).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "lstm:", ttl_s=None, client=None):
        import redis.asyncio  # an optional dependency: pip install "lstm-engine[redis]"

        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s={ttl_s!r}: expected a number of seconds > 0, or None")
        self._r = client if client is not None else redis.asyncio.Redis.from_url(url)
        self.prefix = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        self._ttl = b"" if ttl_s is None else str(max(1, round(ttl_s * 1000))).encode()
        self._epochs = self.prefix + b"epoch"
        # scripts go by their SHA-1 (EVALSHA): redis-py's Script objects would ask the
        # server whether it knows them before every pipeline, a second round trip
        self._sha = {name: hashlib.sha1(text.encode()).hexdigest()
                     for name, text in (("claim", _CLAIM), ("save", _SAVE), ("delete", _DELETE))}

    def redis_key(self, key) -> bytes:
        """The Redis key of stream `key`."""
        if isinstance(key, str):
            return self.prefix + b"s:" + key.encode()
        if isinstance(key, (bytes, bytearray)):
            return self.prefix + b"b:" + bytes(key)
        if isinstance(key, int) and not isinstance(key, bool):
            return self.prefix + b"i:" + str(key).encode()
        raise TypeError(f"RedisStore keys are str, bytes or int, not {type(key).__name__}")

    # ---- the store protocol (Batcher) ----------------------------------------------------
    async def load(self, key, received=None):
        """Claim `key` for a new owner: (epoch, seq, snapshot) of the checkpoint to resume
        from, (epoch, None, None) when none is stored. With `received` (the seq of the
        client's latest output), the newest checkpoint at or before it; the newest one
        when none is."""
        epoch, seq, snap, pseq, psnap = await self._run(
            lambda r: r.evalsha(self._sha["claim"], 2, self.redis_key(key), self._epochs, self._ttl))
        seq, pseq = _seq(seq), _seq(pseq)
        if received is not None and seq is not None and seq > received and pseq is not None and pseq <= received:
            seq, snap = pseq, psnap
        return int(epoch), seq, snap

    async def write_many(self, items) -> list:
        """Apply `(key, epoch, seq, snapshot)` items in order, in one round trip: a snapshot
        is written as the key's newest checkpoint, None deletes the key. Each is refused
        (False) unless `epoch` still owns its key."""
        commands = []
        for key, epoch, seq, blob in items:
            rkey, e = self.redis_key(key), str(epoch).encode()
            if blob is None:
                commands.append((self._sha["delete"], 1, rkey, e))
            else:
                s = b"" if seq is None else str(int(seq)).encode()
                commands.append((self._sha["save"], 1, rkey, e, s, bytes(blob), self._ttl))

        async def send(r):
            pipe = r.pipeline(transaction=False)
            for c in commands:
                pipe.evalsha(*c)
            return await pipe.execute()

        return [bool(r) for r in await self._run(send)] if commands else []

    # ---- direct use --------------------------------------------------------------------
    async def save(self, key, epoch, seq, blob) -> bool:
        return (await self.write_many([(key, epoch, seq, blob)]))[0]

    async def delete(self, key, epoch) -> bool:
        return (await self.write_many([(key, epoch, None, None)]))[0]

    async def checkpoint(self, key):
        """(owner epoch, seq, snapshot) as stored for `key`, without claiming it; None when
        the store holds nothing for it."""
        owner, seq, snap = await self._r.hmget(self.redis_key(key), "owner", "seq", "snap")
        return None if owner is None else (int(owner), _seq(seq), snap)

    async def aclose(self) -> None:
        await self._r.aclose()

    async def _run(self, call):
        """`await call(client)`, loading the scripts first if the server lacks them (a
        restarted server, SCRIPT FLUSH). Only the scripts' absence is retried: a script
        refused before it ran changed nothing."""
        import redis.exceptions

        try:
            return await call(self._r)
        except redis.exceptions.NoScriptError:
            for text in (_CLAIM, _SAVE, _DELETE):
                await self._r.script_load(text)
            return await call(self._r)


def _seq(v):
    return None if v is None or v == b"" else int(v)
