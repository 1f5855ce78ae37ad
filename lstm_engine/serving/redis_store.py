"""`RedisStore`: stream checkpoints in Redis, owned by one worker at a time (DESIGN §9).

Per stream key, one Redis hash holds:
  owner        the epoch of the latest claim (`load`); only its writes are accepted
  seq, snap    the newest checkpoint: the seq of the last frame inside it ('' for a
               state before any numbered frame), the snapshot
  pseq, psnap  an older checkpoint, at least `keep_behind` frames behind the newest

Why two checkpoints: a worker writes a checkpoint of frame s as it answers frame s (and
releases a stream exactly when its last answers may be in flight). If it dies before
those answers reach the client, the newest checkpoint is ahead of what the client has
received, and resuming from it would lose outputs; the older one is behind it, and the
client replays. So a new checkpoint pushes the newest one back only if that is at
least `keep_behind` frames older; else it just replaces the newest.

An epoch is a claim counter (`<prefix>epoch`) with a random suffix the claimer draws:
unique even when Redis lost its data and its counter starts over (a restart without
persistence, a failover to a lagging replica), so a stale owner never matches a later
owner. Ownership checks run inside Redis (Lua), so a check and its write are one atomic
step. A write repeated (a retry after a lost reply) changes nothing the second time.

Claims made together and writes made together each go as ONE script call: redis-py
spends ~25 µs of Python per command even in a pipeline, more than the server's work,
while a script call of 256 checkpoints costs about what one command does.

One Redis server (with replicas for failover); not Redis Cluster, whose scripts may
only touch keys of one slot.
"""
from __future__ import annotations

import asyncio
import hashlib
import os

# KEYS[1] the epoch counter, KEYS[2..] streams' hashes; ARGV[1] TTL in ms ('' for none),
# ARGV[2..] the claimers' random suffixes. Returns per key its new epoch and both
# checkpoints, flat (the caller picks one: Python compares seqs of up to 64 bits
# exactly, Lua's doubles do not).
_CLAIM = """
local out = {}
for i = 2, #KEYS do
  local epoch = redis.call('INCR', KEYS[1]) .. ':' .. ARGV[i]
  redis.call('HSET', KEYS[i], 'owner', epoch)
  if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  local f = redis.call('HMGET', KEYS[i], 'seq', 'snap', 'pseq', 'psnap')
  table.insert(out, epoch)
  for j = 1, 4 do table.insert(out, f[j] or false) end
end
return out
"""

# KEYS streams' hashes; ARGV[1] TTL in ms ('' for none), then per key: epoch, seq ('' for
# none), snapshot ('' deletes the key), and the seq at or below which the newest
# checkpoint becomes the older one ('' for always). Seqs are compared as decimal
# strings, exactly. Per key 1: done; 0: refused, another owner claimed the key (or it
# was deleted) since `epoch`.
_WRITE = """
local function le(a, b)  -- a <= b for decimal strings without leading zeros
  return #a < #b or (#a == #b and a <= b)
end
local out = {}
for i = 1, #KEYS do
  local epoch, seq, snap, older = ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1]
  if redis.call('HGET', KEYS[i], 'owner') ~= epoch then
    out[i] = 0
  elseif snap == '' then
    redis.call('DEL', KEYS[i])
    out[i] = 1
  else
    local cur = redis.call('HMGET', KEYS[i], 'seq', 'snap')
    if cur[2] and not (cur[1] == seq and cur[2] == snap) then  -- else first, or a repeat
      -- the newest becomes the older one when it is behind enough: not when the new one
      -- is no later (another owner had gone further), nor when it is too recent
      if cur[1] == '' or seq == '' or (not le(seq, cur[1]) and (older == '' or le(cur[1], older))) then
        redis.call('HSET', KEYS[i], 'pseq', cur[1], 'psnap', cur[2])
      end
    end
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
    timeout_s: longest wait for Redis in one call; a server that stops answering then
      fails the call (the Batcher retries writes) instead of hanging its callers.
    client: an existing `redis.asyncio.Redis` to use instead of `url` (its own timeouts).

    Stream keys are str, bytes or int (kept apart: "1", b"1" and 1 are three streams).
    Use one RedisStore from one event loop.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "lstm:", ttl_s=None,
                 timeout_s: float = 2.0, client=None):
        import redis.asyncio  # an optional dependency: pip install "lstm-engine[redis]"

        if ttl_s is not None and not 0 < ttl_s <= MAX_TTL_S:  # NaN fails both
            raise ValueError(f"ttl_s={ttl_s!r}: expected seconds in (0, {MAX_TTL_S:g}], or None")
        if not 0 < timeout_s <= 3600:
            raise ValueError(f"timeout_s={timeout_s!r}: expected seconds in (0, 3600]")
        self._r = client if client is not None else redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        self._ttl = b"" if ttl_s is None else str(max(1, round(ttl_s * 1000))).encode()
        self._epochs = self.prefix + b"epoch"
        # scripts go by their SHA-1 (EVALSHA), loaded when the server lacks them
        self._sha = {text: hashlib.sha1(text.encode()).hexdigest() for text in (_CLAIM, _WRITE)}
        self._claims = []  # (redis key, future) of claims not yet sent
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
        client's latest output), the newest checkpoint at or before it. When both are
        ahead of it: the newest, or nothing (zero state: the client replays from its
        first frame) when the newest is the stream's first checkpoint. Claims made while
        one is under way go together in the next call."""
        fut = asyncio.get_running_loop().create_future()
        self._claims.append((self.redis_key(key), fut))
        if self._claimer is None:
            self._claimer = asyncio.get_running_loop().create_task(self._send_claims())
        epoch, seq, snap, pseq, psnap = await fut
        if received is not None and seq not in (None, b"") and int(seq) > received:
            if psnap is None:  # its first checkpoint: zero state is behind the client
                seq = snap = None
            elif pseq == b"" or int(pseq) <= received:  # b"": a state before any numbered frame
                seq, snap = pseq, psnap
        return epoch.decode(), _stored_seq(seq), snap

    async def write_many(self, items, keep_behind: int = 0) -> list:
        """Apply `(key, epoch, seq, snapshot)` items in order, atomically and in one call:
        a snapshot is written as the key's newest checkpoint, None deletes the key. Each
        is refused (False) unless `epoch` still owns its key. The newest checkpoint is
        kept as the older one if it is at least `keep_behind` frames behind the new."""
        if not items:
            return []
        keys, args = [], [self._ttl]
        for key, epoch, seq, blob in items:
            keys.append(self.redis_key(key))
            older = b"" if seq is None or seq < keep_behind else str(seq - keep_behind).encode()
            args += [epoch.encode(), b"" if seq is None else str(seq).encode(), b"" if blob is None else bytes(blob),
                     older]
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
        return None if owner is None else (owner.decode(), _stored_seq(seq), snap)

    async def aclose(self) -> None:
        await self._r.aclose()

    # ---- calls -----------------------------------------------------------------------------
    async def _send_claims(self):
        try:
            while self._claims:
                batch, self._claims = self._claims[:CLAIMS_AT_ONCE], self._claims[CLAIMS_AT_ONCE:]
                try:
                    flat = await self._eval(_CLAIM, [self._epochs] + [k for k, _ in batch],
                                            [self._ttl] + [os.urandom(8).hex() for _ in batch])
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


def _stored_seq(v):
    return None if v is None or v == b"" else int(v)
