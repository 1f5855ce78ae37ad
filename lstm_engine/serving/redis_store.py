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
its write are one atomic step.

Claims made together and writes made together each go as ONE script call: redis-py
spends ~25 µs of Python per command even in a pipeline, more than the server's work,
while a script call of 256 checkpoints costs about what one command does.

One Redis server (with replicas for failover); not Redis Cluster, whose scripts may
only touch keys of one slot.
"""
from __future__ import annotations

import asyncio
import hashlib

# KEYS[1] the epoch counter, KEYS[2..] streams' hashes; ARGV[1] TTL in ms ('' for none).
# Returns per key its new epoch and both checkpoints, flat (the caller picks one: Python
# compares seqs of up to 64 bits exactly, Lua's doubles do not).
_CLAIM = """
local out = {}
for i = 2, #KEYS do
  local epoch = redis.call('INCR', KEYS[1])
  redis.call('HSET', KEYS[i], 'owner', epoch)
  if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  local f = redis.call('HMGET', KEYS[i], 'seq', 'snap', 'pseq', 'psnap')
  table.insert(out, epoch)
  for j = 1, 4 do table.insert(out, f[j] or false) end
end
return out
"""

# KEYS streams' hashes; ARGV[1] TTL in ms ('' for none), then per key: epoch, seq ('' for
# none), snapshot ('' deletes the key). Per key 1: done (a write makes the newest
# checkpoint the previous one); 0: refused, another owner claimed the key (or it was
# deleted) since `epoch`.
_WRITE = """
local out = {}
for i = 1, #KEYS do
  local epoch, seq, snap = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if redis.call('HGET', KEYS[i], 'owner') ~= epoch then
    out[i] = 0
  elseif snap == '' then
    redis.call('DEL', KEYS[i])
    out[i] = 1
  else
    local cur = redis.call('HMGET', KEYS[i], 'seq', 'snap')
    if cur[2] then redis.call('HSET', KEYS[i], 'pseq', cur[1], 'psnap', cur[2]) end
    redis.call('HSET', KEYS[i], 'seq', seq, 'snap', snap)
    if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
    out[i] = 1
  end
end
return out
"""

MAX_TTL_S = 10 * 365 * 86400  # far below what Redis accepts as an expiry, and longer than any stream
CLAIMS_AT_ONCE = 256  # per script call: Redis serves nothing else while a script runs


class RedisStore:
    """Checkpoints of streams in one Redis server, for `Batcher(store=...)`.

    url: a redis:// (or rediss://, unix://) URL, as redis-py's `from_url` takes it.
    prefix: of every key this store writes, so services can share a server.
    ttl_s: a stream's checkpoints expire this long after their latest write or claim
      (None: they stay until the stream is closed). Streams whose clients never come
      back are otherwise kept forever.
    client: an existing `redis.asyncio.Redis` to use instead of `url`.

    Stream keys are str, bytes or int (kept apart: "1", b"1" and 1 are three streams).
    Use one RedisStore from one event loop.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "lstm:", ttl_s=None, client=None):
        import redis.asyncio  # an optional dependency: pip install "lstm-engine[redis]"

        if ttl_s is not None and not 0 < ttl_s <= MAX_TTL_S:  # NaN fails both
            raise ValueError(f"ttl_s={ttl_s!r}: expected seconds in (0, {MAX_TTL_S:g}], or None")
        self._r = client if client is not None else redis.asyncio.Redis.from_url(url)
        self.prefix = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        self._ttl = b"" if ttl_s is None else str(max(1, round(ttl_s * 1000))).encode()
        self._epochs = self.prefix + b"epoch"
        # scripts go by their SHA-1 (EVALSHA), loaded when the server lacks them
        self._sha = {text: hashlib.sha1(text.encode()).hexdigest() for text in (_CLAIM, _WRITE)}
        self._claims = []  # (redis key, received, future) of claims not yet sent
        self._claimer = None  # the task sending them

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
        when none is. Claims made while one is under way go together in the next call."""
        fut = asyncio.get_running_loop().create_future()
        self._claims.append((self.redis_key(key), fut))
        if self._claimer is None:
            self._claimer = asyncio.get_running_loop().create_task(self._send_claims())
        epoch, seq, snap, pseq, psnap = await fut
        seq, pseq = _seq(seq), _seq(pseq)
        if received is not None and seq is not None and seq > received and pseq is not None and pseq <= received:
            seq, snap = pseq, psnap
        return int(epoch), seq, snap

    async def write_many(self, items) -> list:
        """Apply `(key, epoch, seq, snapshot)` items in order, atomically and in one call:
        a snapshot is written as the key's newest checkpoint, None deletes the key. Each
        is refused (False) unless `epoch` still owns its key."""
        if not items:
            return []
        keys, args = [], [self._ttl]
        for key, epoch, seq, blob in items:
            keys.append(self.redis_key(key))
            args += [str(epoch).encode(), b"" if seq is None else str(int(seq)).encode(),
                     b"" if blob is None else bytes(blob)]
        return [bool(r) for r in await self._eval(_WRITE, keys, args)]

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

    # ---- calls -----------------------------------------------------------------------------
    async def _send_claims(self):
        try:
            while self._claims:
                batch, self._claims = self._claims[:CLAIMS_AT_ONCE], self._claims[CLAIMS_AT_ONCE:]
                try:
                    flat = await self._eval(_CLAIM, [self._epochs] + [k for k, _ in batch], [self._ttl])
                except Exception as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for i, (_, fut) in enumerate(batch):
                    if not fut.done():  # its caller may have been cancelled
                        fut.set_result(flat[5 * i:5 * i + 5])
        finally:
            self._claimer = None

    async def _eval(self, script, keys, args):
        """EVALSHA, loading the script first if the server lacks it (a restarted server,
        SCRIPT FLUSH): a script refused as unknown did not run."""
        import redis.exceptions

        try:
            return await self._r.evalsha(self._sha[script], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self._r.script_load(script)
            return await self._r.evalsha(self._sha[script], len(keys), *keys, *args)


def _seq(v):
    return None if v is None or v == b"" or v is False else int(v)
