"""Rate-limit windows in Redis, for many machines: one Lua script per hit of a window.

The script is the strategy of ``slidingwindow.py``, run inside Redis so that it
is atomic and one round trip (``EVALSHA``, through redis-py's ``register_script``):
it reads the key's slots, forgets those that stopped counting, counts the
request if there is room, and answers what the rate-limit headers need. The
requests a worker's threads count in one window at the same moment share one
script (``groupcommit.py``), which counts them one after another. A
key's window is one small hash (a field per slot that holds requests, at most
``SLOTS + 1``) that expires when its newest request stops counting, so nothing
outlives its period. The time is Redis' own, the same for every machine.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script

from .groupcommit import GroupCommit
from .slidingwindow import SLOTS, Counted, Hit, WindowStorageError

# KEYS[1]: the window; ARGV: limit, period, slots, hits. Counts the hits one after another, each if
# there is room. Returns {how many were let through, count, reset_at}.
_HIT = """
local limit, period, slots, hits = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
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
local allowed = math.max(0, math.min(hits, limit - count))
if allowed > 0 then
  count = count + allowed
  redis.call('HINCRBY', KEYS[1], string.format('%d', slot), allowed)
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


# KEYS: the windows; ARGV: slots, then limit, period and cost of each window. Counts the request in
# every window if each has room for its cost, else in none. Returns {allowed, count1, reset1, ...}.
_HIT_ALL = """
local slots = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local standing, allowed = {}, 1
for k = 1, #KEYS do
  local limit, period, cost = tonumber(ARGV[3 * k - 1]), tonumber(ARGV[3 * k]), tonumber(ARGV[3 * k + 1])
  local width = period / slots
  local slot = math.floor(now / width)
  local fields = redis.call('HGETALL', KEYS[k])
  local count, oldest = 0, slot
  for i = 1, #fields, 2 do
    local counted = tonumber(fields[i])
    if counted < slot - slots then
      redis.call('HDEL', KEYS[k], fields[i])
    else
      count = count + tonumber(fields[i + 1])
      oldest = math.min(oldest, counted)
    end
  end
  if count + cost > limit then allowed = 0 end
  standing[k] = {slot, width, count, oldest, cost, period}
end
local answer = {allowed}
for k = 1, #KEYS do
  local slot, width, count, oldest, cost, period = unpack(standing[k])
  if allowed == 1 then
    count = count + cost
    redis.call('HINCRBY', KEYS[k], string.format('%d', slot), cost)
    redis.call('PEXPIRE', KEYS[k], math.ceil((period + width) * 1000))
  end
  table.insert(answer, count)
  table.insert(answer, tostring((oldest + slots + 1) * width))
end
return answer
"""

# KEYS: the windows; ARGV: the cost to take back from each, from its newest slots down.
_GIVE_BACK_ALL = """
for k = 1, #KEYS do
  local cost = tonumber(ARGV[k])
  local fields = redis.call('HGETALL', KEYS[k])
  local slots = {}
  for i = 1, #fields, 2 do table.insert(slots, {tonumber(fields[i]), tonumber(fields[i + 1]), fields[i]}) end
  table.sort(slots, function(a, b) return a[1] > b[1] end)
  for _, slot in ipairs(slots) do
    if cost <= 0 then break end
    local taken = math.min(cost, slot[2])
    if taken > 0 then redis.call('HINCRBY', KEYS[k], slot[3], -taken) end
    cost = cost - taken
  end
end
return 0
"""


class RedisWindows:
    """Rate-limit windows in the Redis at ``url``."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script: Script = self._client.register_script(_HIT)
        self._give_back: Script = self._client.register_script(_GIVE_BACK)
        self._hit_all: Script = self._client.register_script(_HIT_ALL)
        self._give_back_all: Script = self._client.register_script(_GIVE_BACK_ALL)
        self._hits: GroupCommit[Any] = GroupCommit()

    def hit(self, key: str, limit: int, period: int) -> Hit:
        """Count one request of ``key`` against ``limit`` per ``period`` seconds, atomically; with the
        requests this worker's other threads count in the window at the same moment, in one script."""
        name = _name(key, period)
        try:
            (allowed, count, reset_at), _, place = self._hits.run(
                (name, limit), lambda hits: self._script(keys=[name], args=[limit, period, SLOTS, hits])
            )
        except redis.RedisError as error:
            raise WindowStorageError(type(error).__name__) from error
        if place < allowed:  # the group's hits were let through in turn: this one, and those before it
            return Hit(True, int(count) - (int(allowed) - 1 - place), float(reset_at))
        return Hit(False, int(count), float(reset_at))

    def hit_all(self, windows: list[Counted]) -> list[Hit]:
        """Count one request in every window of ``windows``, or in none: one script, one round trip."""
        args: list[int] = [SLOTS]
        for window in windows:
            args += [window.limit, window.period, window.cost]
        try:
            allowed, *answers = self._hit_all(keys=[_name(window.key, window.period) for window in windows], args=args)
        except redis.RedisError as error:
            raise WindowStorageError(type(error).__name__) from error
        return [
            Hit(bool(allowed), int(count), float(reset_at))
            for count, reset_at in zip(answers[::2], answers[1::2], strict=True)
        ]

    def give_back_all(self, windows: list[Counted]) -> None:
        """Take back from each window the cost a request was counted with: one script."""
        try:
            self._give_back_all(
                keys=[_name(window.key, window.period) for window in windows], args=[w.cost for w in windows]
            )
        except redis.RedisError as error:
            raise WindowStorageError(type(error).__name__) from error

    def give_back(self, key: str, period: int) -> None:
        """Take back one request of ``key`` counted in its ``period`` window, atomically."""
        try:
            self._give_back(keys=[_name(key, period)])
        except redis.RedisError as error:
            raise WindowStorageError(type(error).__name__) from error

    def answers(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            answer: Any = self._client.ping()
        except redis.RedisError:
            return False
        return bool(answer)


def _name(key: str, period: int) -> str:
    return f"keyservice:window:{key}/{period}"
