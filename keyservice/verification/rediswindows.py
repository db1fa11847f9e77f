"""Rate-limit windows in Redis, for many machines: one Lua script per request.

The script is the strategy of ``slidingwindow.py``, run inside Redis so that it
is atomic and one round trip (``EVALSHA``, through redis-py's ``register_script``):
it reads the key's slots, forgets those that stopped counting, counts the
request if there is room, and answers what the rate-limit headers need. A
key's window is one small hash (a field per slot that holds requests, at most
``SLOTS + 1``) that expires when its newest request stops counting, so nothing
outlives its period. The time is Redis' own, the same for every machine.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script

from .slidingwindow import SLOTS, Hit, WindowStorageError

# KEYS[1]: the window; ARGV: limit, period, slots. Returns {allowed, count, reset_at}.
_HIT = """
local limit, period, slots = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local width = period / slots
local slot = math.floor(now / width)
local fields = redis.call('HGETALL', KEYS[1])
local count, oldest = 0, slot
for i = 1, #fields, 2 do
  local counted = tonumber(fields[i])
  if counted < slot - slots then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    count = count + tonumber(fields[i + 1])
    oldest = math.min(oldest, counted)
  end
end
local allowed = 0
if count < limit then
  allowed, count = 1, count + 1
  redis.call('HINCRBY', KEYS[1], string.format('%d', slot), 1)
  redis.call('PEXPIRE', KEYS[1], math.ceil((period + width) * 1000))
end
return {allowed, count, tostring((oldest + slots + 1) * width)}
"""

# KEYS[1]: the window. Takes one request back from its newest slot that holds any.
_GIVE_BACK = """
local fields = redis.call('HGETALL', KEYS[1])
local newest = nil
for i = 1, #fields, 2 do
  if tonumber(fields[i + 1]) > 0 and (newest == nil or tonumber(fields[i]) > tonumber(newest)) then
    newest = fields[i]
  end
end
if newest ~= nil then redis.call('HINCRBY', KEYS[1], newest, -1) end
return 0
"""


class RedisWindows:
    """Rate-limit windows in the Redis at ``url``."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script: Script = self._client.register_script(_HIT)
        self._give_back: Script = self._client.register_script(_GIVE_BACK)

    def hit(self, key: str, limit: int, period: int) -> Hit:
        """Count one request of ``key`` against ``limit`` per ``period`` seconds, atomically."""
        try:
            allowed, count, reset_at = self._script(
                keys=[f"keyservice:window:{key}/{period}"], args=[limit, period, SLOTS]
            )
        except redis.RedisError as error:
            raise WindowStorageError(type(error).__name__) from error
        return Hit(bool(allowed), int(count), float(reset_at))

    def give_back(self, key: str, period: int) -> None:
        """Take back one request of ``key`` counted in its ``period`` window, atomically."""
        try:
            self._give_back(keys=[f"keyservice:window:{key}/{period}"])
        except redis.RedisError as error:
            raise WindowStorageError(type(error).__name__) from error

    def answers(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            answer: Any = self._client.ping()
        except redis.RedisError:
            return False
        return bool(answer)
