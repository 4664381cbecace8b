"""Redis store: shared by every relay of a cluster.

Every operation that reads and writes is one Lua script (atomic on the
server).  Time is always the Redis server's ``TIME`` taken inside the
script, never a relay's clock, so relays with skewed clocks agree.  Socket
timeouts are short (``StoreSettings.connect_timeout`` / ``op_timeout``) and
every Redis failure raises :class:`~outpost.store.base.StoreError`.  Works
with a standalone Redis, or one behind Redis Sentinel
(``redis+sentinel://``, see :func:`parse_sentinel_url`: the master is
discovered through the Sentinels and found again after a failover), not
Redis Cluster (the scripts touch keys they do not declare).

Keys (``P`` is ``StoreSettings.key_prefix``, default ``outpost:``):

=============================  =================================================
``P rl:<key>@<window>``        hash: subwindow index -> count (sliding window of
                               60 subwindows), expires when the bucket is empty
``P ev:<key>``                 sorted set: event timestamps, expires after window
``P seq``                      counter making event/fingerprint members unique
``P lock:<key>``               hash: locked, reason, since, until, by, auto
``P locks``                    set: keys that hold a lock (for ``list_locks``)
``P fp:<fp>``                  sorted set of ``seq|recipients|member`` by time
``P fpa:<fp>``                 hash: running totals of ``P fp:<fp>``
``P st:m:<minute>``            hash: message statistics of one minute (kept 1 h)
``P st:h:<hour>``              hash: the same of one hour (kept 1 day)
``P st:r:<minute>``            hash: recent identities of one minute (at most
                               ``max_stat_names`` fields, kept 1 h)
``P dlog``                     sorted set: the decision log, ``seq|JSON`` by
                               server time (at most ``max_decisions``, none
                               older than ``decision_ttl``)
``P vol:<key>``                string: an identity's volume record (JSON, see
                               :mod:`outpost.store.volume`), expires when idle
``P blob:<name>``              string: blob
``P conn:<ip>``                set: connection slots ``host:pid:n``
``P alive:<host>:<pid>``       heartbeat of a process (TTL ``heartbeat_ttl``)
``P pslots:<host>:<pid>``      set: IPs where that process holds slots
=============================  =================================================
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union, cast
from urllib.parse import parse_qsl, unquote

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .base import (
    STAT_PERIODS,
    Bucket,
    BucketState,
    DecisionEntry,
    FingerprintStats,
    HitResult,
    Lock,
    Store,
    StoreError,
    VolumeCounts,
    VolumeSpec,
    stat_buckets,
)
from .owners import slot_owner
from .settings import StoreSettings
from .url import redact_url
from .volume import VOLUME_PREFIX, check_domains
from .windows import (
    EPSILON,
    SUBWINDOWS,
    WindowCounts,
    bucket_id,
    bucket_key_of,
    bucket_state,
    check_recipients,
    check_window,
    key_in_prefix,
    validate_buckets,
)

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
"""

# Sliding window of subwindows (see outpost.store.windows).  A bucket is a hash
# {subwindow index: count}.  A key of another type (a GCRA timestamp string left by
# an older version) reads as empty and is replaced when the bucket is written.
# KEYS: bucket ids.  ARGV: dry_run, epsilon, subwindows per window, then limit,
# window, cost per key.  Returns {allowed, index of the refusing key or -1, wait}.
_HIT = _PRELUDE + """
local now = clock()
local eps, S = tonumber(ARGV[2]), tonumber(ARGV[3])
local state, order = {}, {}
local worst, worst_wait = -1, -1
local function load(k, window)
  local w = window / S
  local cur = math.floor(now / w)
  local st = {w = w, cur = cur, subwindows = {}, used = 0, drop = {}, reset = false,
              dirty = false}
  local flat = redis.pcall('HGETALL', k)
  if flat.err then st.reset = true; flat = {} end
  for j = 1, #flat, 2 do
    local idx, n = tonumber(flat[j]), tonumber(flat[j + 1])
    if idx < cur - S or idx > cur then st.drop[#st.drop + 1] = flat[j] end
    if idx >= cur - S then
      if idx > cur then idx = cur end
      st.subwindows[idx] = (st.subwindows[idx] or 0) + n
      st.used = st.used + n
    end
  end
  return st
end
local function wait_until_fits(st, excess, window)
  local idx = {}
  for i in pairs(st.subwindows) do idx[#idx + 1] = i end
  table.sort(idx)
  for _, i in ipairs(idx) do
    excess = excess - st.subwindows[i]
    if excess <= 0 then return math.max(0, (i + S + 1) * st.w - now) + eps end
  end
  return window
end
for i = 1, #KEYS do
  local k = KEYS[i]
  local limit, window, cost = tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2]), tonumber(ARGV[3*i+3])
  local st = state[k]
  if not st then st = load(k, window); state[k] = st; order[#order + 1] = k end
  local wait = nil
  if cost > limit then
    wait = window
  else
    local excess = st.used + cost - limit
    if excess <= 0 then
      if cost > 0 then
        st.subwindows[st.cur] = (st.subwindows[st.cur] or 0) + cost
        st.used = st.used + cost
        st.dirty = true
      end
    else
      wait = wait_until_fits(st, excess, window)
    end
  end
  if wait and wait > worst_wait then worst, worst_wait = i, wait end
end
if worst > 0 then return {0, worst - 1, fmt(worst_wait)} end
if ARGV[1] ~= '1' then
  for _, k in ipairs(order) do
    local st = state[k]
    if st.reset then redis.call('DEL', k) end
    if #st.drop > 0 then redis.call('HDEL', k, unpack(st.drop)) end
    local n = st.subwindows[st.cur]
    if n and (st.dirty or #st.drop > 0) then
      redis.call('HSET', k, string.format('%.0f', st.cur), n)
    end
    if st.dirty then
      redis.call('PEXPIRE', k, math.ceil(((st.cur + S + 1) * st.w - now) * 1000) + 1)
    end
  end
end
return {1, -1, '0'}
"""

# KEYS: bucket ids.  Returns now, then each bucket's HGETALL ({} when absent
# or of another type).
_PEEK = _PRELUDE + """
local out = {fmt(clock())}
for i = 1, #KEYS do
  local flat = redis.pcall('HGETALL', KEYS[i])
  if flat.err then flat = {} end
  out[i + 1] = flat
end
return out
"""

# KEYS: event set, sequence.  ARGV: window, max events.
_EVENT = _PRELUDE + """
local now, window, most = clock(), tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now - window))
redis.call('ZADD', KEYS[1], fmt(now), fmt(now) .. ':' .. redis.call('INCR', KEYS[2]))
local n = redis.call('ZCARD', KEYS[1])
if n > most then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - most - 1)
  n = most
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1)
return n
"""

_LOCK_PRELUDE = _PRELUDE + """
local function settle(k, key, index, now, hist_ms)
  local h = redis.call('HMGET', k, 'locked', 'until')
  if h[1] == '1' and h[2] ~= '' and tonumber(h[2]) <= now then
    redis.call('HDEL', k, 'reason', 'since', 'until', 'by')
    redis.call('HSET', k, 'locked', '0')
    redis.call('HINCRBY', k, 'auto', 1)
    redis.call('SREM', index, key)
    redis.call('PEXPIRE', k, hist_ms)
  end
end
local function info(k)
  local h = redis.call('HMGET', k, 'locked', 'reason', 'since', 'until', 'by', 'auto')
  if h[1] ~= '1' then return {} end
  return {h[2], h[3], h[4], h[5], h[6] or '0'}
end
"""

# KEYS: lock hash, index.  ARGV: key, history ms.
_GET_LOCK = _LOCK_PRELUDE + """
settle(KEYS[1], ARGV[1], KEYS[2], clock(), ARGV[2])
return info(KEYS[1])
"""

# KEYS: lock hash, index.  ARGV: key, history ms, reason, duration|'', by, max|''.
_SET_LOCK = _LOCK_PRELUDE + """
local now = clock()
settle(KEYS[1], ARGV[1], KEYS[2], now, ARGV[2])
local auto = tonumber(redis.call('HGET', KEYS[1], 'auto') or '0')
local untilv = ''
if ARGV[4] ~= '' and not (ARGV[6] ~= '' and auto >= tonumber(ARGV[6])) then
  untilv = fmt(now + tonumber(ARGV[4]))
end
redis.call('HSET', KEYS[1], 'locked', '1', 'reason', ARGV[3], 'since', fmt(now),
           'until', untilv, 'by', ARGV[5], 'auto', auto)
if untilv == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000) + tonumber(ARGV[2]))
end
redis.call('SADD', KEYS[2], ARGV[1])
return info(KEYS[1])
"""

# KEYS: lock hash, index.  ARGV: key, history ms.
_REMOVE_LOCK = _LOCK_PRELUDE + """
settle(KEYS[1], ARGV[1], KEYS[2], clock(), ARGV[2])
local was = redis.call('HGET', KEYS[1], 'locked') == '1'
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if was then return 1 end
return 0
"""

# KEYS: index.  ARGV: lock key prefix, history ms.  Returns key + info per lock.
_LIST_LOCKS = _LOCK_PRELUDE + """
local now, out = clock(), {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. key
  settle(k, key, KEYS[1], now, ARGV[2])
  local i = info(k)
  if #i > 0 then
    out[#out + 1] = key
    for _, v in ipairs(i) do out[#out + 1] = v end
  elseif redis.call('HGET', k, 'locked') ~= '1' then
    redis.call('SREM', KEYS[1], key)
  end
end
return out
"""

# Count one message in a fingerprint's entries ``z`` and totals ``agg``
# (sequence key ``seq``); returns the totals m, r, u.
_FINGERPRINT_ADD = _PRELUDE + """
local function add(z, agg, seq_key, member, recipients, window, most)
  local now = clock()
  local function forget(entries)
    for _, e in ipairs(entries) do
      local r, m = string.match(e, '^%d+|(%d+)|(.*)$')
      redis.call('HINCRBY', agg, '#m', -1)
      redis.call('HINCRBY', agg, '#r', -tonumber(r))
      if redis.call('HINCRBY', agg, 'u:' .. m, -1) <= 0 then
        redis.call('HDEL', agg, 'u:' .. m)
        redis.call('HINCRBY', agg, '#u', -1)
      end
    end
  end
  local cutoff = fmt(now - window)
  forget(redis.call('ZRANGEBYSCORE', z, '-inf', cutoff))
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
  local seq = redis.call('INCR', seq_key)
  redis.call('ZADD', z, fmt(now), seq .. '|' .. recipients .. '|' .. member)
  redis.call('HINCRBY', agg, '#m', 1)
  redis.call('HINCRBY', agg, '#r', tonumber(recipients))
  if redis.call('HINCRBY', agg, 'u:' .. member, 1) == 1 then
    redis.call('HINCRBY', agg, '#u', 1)
  end
  local n = redis.call('ZCARD', z)
  if n > most then
    forget(redis.call('ZRANGE', z, 0, n - most - 1))
    redis.call('ZREMRANGEBYRANK', z, 0, n - most - 1)
  end
  local ms = math.ceil(window * 1000) + 1
  redis.call('PEXPIRE', z, ms)
  redis.call('PEXPIRE', agg, ms)
  return redis.call('HMGET', agg, '#m', '#r', '#u')
end
"""

# KEYS: entries, totals, sequence.  ARGV: member, recipients, window, max entries.
_FINGERPRINT = _FINGERPRINT_ADD + """
return add(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
"""

# Several messages, one after the other, as _FINGERPRINT each (in one round
# trip).  KEYS: sequence, then entries and totals per item.  ARGV: window,
# max entries, then member and recipients per item.  Returns m, r, u per item.
_FINGERPRINTS = _FINGERPRINT_ADD + """
local window, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, (#KEYS - 1) / 2 do
  local t = add(KEYS[2 * i], KEYS[2 * i + 1], KEYS[1], ARGV[2 * i + 1], ARGV[2 * i + 2], window, most)
  out[#out + 1] = t[1]
  out[#out + 1] = t[2]
  out[#out + 1] = t[3]
end
return out
"""

# The rule of outpost.store.volume.apply, in Lua (the record as cjson).  KEYS:
# record.  ARGV: dry_run, window, decay, ttl ms, max domains, max recent,
# recipients, then the domain hashes.  Returns m, r, domains, new, the four
# baselines and since.
_VOLUME = _PRELUDE + """
local now = clock()
local window, decay = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxd, maxk = tonumber(ARGV[5]), tonumber(ARGV[6])
local w = math.floor(now / window)
local rec = nil
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'string' then
  local ok, got = pcall(cjson.decode, raw)
  if ok and type(got) == 'table' and type(got.b) == 'table' and #got.b == 4 then rec = got end
end
if not rec then rec = {w = w, m = 0, r = 0, n = 0, d = {}, k = {}, q = 0, b = {0, 0, 0, 0}, s = math.floor(now)} end
if w > rec.w then
  local closed = {rec.m, rec.r, #rec.d, rec.n}
  for i = 1, 4 do rec.b[i] = rec.b[i] * decay + closed[i] * (1 - decay) end
  local idle = w - rec.w - 1
  if idle > 0 then
    local f = decay ^ idle
    for i = 1, 4 do rec.b[i] = rec.b[i] * f end
  end
  rec.w, rec.m, rec.r, rec.n, rec.d = w, 0, 0, 0, {}
end
rec.m = rec.m + 1
rec.r = rec.r + tonumber(ARGV[7])
local inwin, held = {}, 0
for _, h in ipairs(rec.d) do inwin[h] = true end
for _ in pairs(rec.k) do held = held + 1 end
for i = 8, #ARGV do
  local h = ARGV[i]
  if not inwin[h] and #rec.d < maxd then
    rec.d[#rec.d + 1] = h
    inwin[h] = true
  end
  if rec.k[h] == nil then
    rec.n = rec.n + 1
    held = held + 1
  end
  rec.q = rec.q + 1
  rec.k[h] = rec.q
end
while held > maxk do
  local oldest, seq = nil, nil
  for h, q in pairs(rec.k) do
    if seq == nil or q < seq then oldest, seq = h, q end
  end
  rec.k[oldest] = nil
  held = held - 1
end
if ARGV[1] ~= '1' then
  redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', ARGV[4])
end
return {rec.m, rec.r, #rec.d, rec.n, fmt(rec.b[1]), fmt(rec.b[2]), fmt(rec.b[3]), fmt(rec.b[4]),
        fmt(rec.s)}
"""

# ARGV: key prefix ("P st:"), max recent names, number of counts, number of
# recent names, then name, n for each count, then name, n for each recent name, then for each
# period: name, width, buckets kept.
_STAT_ADD = _PRELUDE + """
local now, most = clock(), tonumber(ARGV[2])
local nc, nr = tonumber(ARGV[3]), tonumber(ARGV[4])
local first_recent = 5 + 2 * nc
local periods = first_recent + 2 * nr
for p = periods, #ARGV, 3 do
  local width, kept = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  local cur = math.floor(now / width)
  local ttl = math.ceil(((cur + kept) * width - now) * 1000) + 1
  local k = ARGV[1] .. ARGV[p] .. ':' .. string.format('%.0f', cur)
  for i = 5, first_recent - 1, 2 do
    redis.call('HINCRBY', k, ARGV[i], ARGV[i + 1])
  end
  if nc > 0 then redis.call('PEXPIRE', k, ttl) end
  if ARGV[p] == 'm' and nr > 0 then
    local r = ARGV[1] .. 'r:' .. string.format('%.0f', cur)
    local held = redis.call('HLEN', r)
    local roomy = held + nr <= most
    for i = first_recent, periods - 1, 2 do
      if roomy or redis.call('HEXISTS', r, ARGV[i]) == 1 then
        redis.call('HINCRBY', r, ARGV[i], ARGV[i + 1])
      elseif held < most then
        redis.call('HINCRBY', r, ARGV[i], ARGV[i + 1])
        held = held + 1
      end
    end
    redis.call('PEXPIRE', r, ttl)
  end
end
return 1
"""

# ARGV: key prefix ("P st:"), period, width, count.  Returns flat name, n pairs
# (a name may repeat: summed by the caller).
_STAT_READ = _PRELUDE + """
local now, width, count = clock(), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = math.floor(now / width)
local out = {}
local kinds = {ARGV[2]}
if ARGV[2] == 'm' then kinds[2] = 'r' end
for i = 0, count - 1 do
  for _, kind in ipairs(kinds) do
    local flat = redis.call('HGETALL', ARGV[1] .. kind .. ':' .. string.format('%.0f', cur - i))
    for j = 1, #flat do out[#out + 1] = flat[j] end
  end
end
return out
"""

_CONN_PRELUDE = _PRELUDE + """
local function reclaim(set, alive_prefix)
  local alive = {}
  for _, s in ipairs(redis.call('SMEMBERS', set)) do
    local owner = string.match(s, '^(.*):[^:]*$') or s
    if alive[owner] == nil then
      alive[owner] = redis.call('EXISTS', alive_prefix .. owner) == 1
    end
    if not alive[owner] then redis.call('SREM', set, s) end
  end
end
"""

# KEYS: conn set, own heartbeat, own pslots.  ARGV: slot, limit, ttl ms, alive prefix, ip.
_CONN_ACQUIRE = _CONN_PRELUDE + """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
reclaim(KEYS[1], ARGV[4])
local n = redis.call('SCARD', KEYS[1])
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {1, n} end
if n >= tonumber(ARGV[2]) then return {0, n} end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {1, n + 1}
"""

# KEYS: conn set.  ARGV: alive prefix.
_CONN_COUNT = _CONN_PRELUDE + """
reclaim(KEYS[1], ARGV[1])
return redis.call('SCARD', KEYS[1])
"""

# KEYS: heartbeat, pslots.  ARGV: ttl ms.
_ALIVE = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: heartbeat, pslots.  ARGV: conn prefix, owner.
_GONE = """
local mark = ARGV[2] .. ':'
for _, ip in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local set = ARGV[1] .. ip
  for _, s in ipairs(redis.call('SMEMBERS', set)) do
    if string.sub(s, 1, #mark) == mark then redis.call('SREM', set, s) end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


#: URL schemes of a Redis behind Sentinel (``rediss+``: TLS to the Redis
#: servers; the Sentinels themselves are spoken to in plain text).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

#: Query parameters a Sentinel URL may carry.
SENTINEL_QUERY = ("sentinel_username", "sentinel_password",
                  "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names (see :func:`parse_sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    tls: bool = False
    #: the query parameters of :data:`SENTINEL_QUERY` that were given
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    (``rediss+sentinel://`` for TLS to the master); a port defaults to
    26379, the db to 0; ``user:password`` is the Redis servers' (AUTH),
    ``?sentinel_password=…`` (and ``sentinel_username``) the Sentinels'.

    Raises ValueError (the message never shows a password)."""
    where = f"store URL {redact_url(url)}"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"{where}: expected redis+sentinel://HOST:PORT,.../SERVICE/DB")
    netloc, _, tail = rest.partition("/")
    tail, _, query = tail.partition("?")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = []
    for item in netloc.split(","):
        item = item.strip()
        host, port = item, "26379"
        if item.startswith("["):                        # [::1]:26379
            host, _, after = item[1:].partition("]")
            if after:
                if not after.startswith(":"):
                    raise ValueError(f"{where}: bad Sentinel address {item!r}")
                port = after[1:]
        elif ":" in item:
            host, port = item.rsplit(":", 1)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{where}: bad Sentinel address {item!r} (use host:port)")
        sentinels.append((host, int(port)))
    parts = tail.split("/") if tail else []
    if not parts or not parts[0]:
        raise ValueError(f"{where}: name the master: .../SERVICE/DB (e.g. /mymaster/0)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"{where}: the path must be /SERVICE or /SERVICE/DB (DB a number)")
    options = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted({k for k, _ in options} - set(SENTINEL_QUERY))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(SENTINEL_QUERY)}")
    reqs = dict(options).get("ssl_cert_reqs")
    if reqs is not None and reqs not in ("required", "optional", "none"):
        raise ValueError(f"{where}: ssl_cert_reqs must be required, optional or none")
    return SentinelTarget(
        sentinels=tuple(sentinels), service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0, username=username, password=password,
        tls=scheme.lower() == "rediss+sentinel", options=tuple(options))


def _sentinel_client(target: SentinelTarget, settings: StoreSettings,
                     **connection: Any) -> tuple[redis_lib.Redis, Sentinel]:
    """A client of the master that ``target``'s Sentinels name.  Each new
    connection asks the Sentinels (in turn, first the last one that
    answered) which server is the master; a connection that breaks, or that
    finds its server demoted to a replica (READONLY), is dropped, and the
    retry connects to the master the Sentinels name then."""
    options = dict(target.options)
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.op_timeout,
        # One try per Sentinel: the next Sentinel is the retry.
        "retry": Retry(NoBackoff(), 0),
    }
    for key in ("username", "password"):
        if options.get(f"sentinel_{key}"):
            sentinel_kwargs[key] = options[f"sentinel_{key}"]
    master: dict[str, Any] = dict(connection, db=target.db, username=target.username,
                                  password=target.password)
    if target.tls:
        master["ssl"] = True
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if key in options:
                master[key] = options[key]
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(target.service, **master), sentinel


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

# ARGV: key prefix ("P st:"), period, width, count, then the names.  Returns one
# list of counts (false: none) per bucket and kind: m then r for period m.
_STAT_SERIES = _PRELUDE + """
local now, width, count = clock(), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = math.floor(now / width)
local names = {}
for i = 5, #ARGV do names[#names + 1] = ARGV[i] end
local kinds = {ARGV[2]}
if ARGV[2] == 'm' then kinds[2] = 'r' end
local out = {}
for i = 0, count - 1 do
  for _, kind in ipairs(kinds) do
    out[#out + 1] = redis.call('HMGET', ARGV[1] .. kind .. ':' .. string.format('%.0f', cur - i),
                               unpack(names))
  end
end
return out
"""

# KEYS: log, seq.  ARGV: max entries, ttl seconds, then one JSON entry each.
_DECISION_ADD = _PRELUDE + """
local now, most, ttl = clock(), tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #ARGV - 2
local last = redis.call('INCRBY', KEYS[2], n)
for i = 1, n do
  redis.call('ZADD', KEYS[1], now, string.format('%016d', last - n + i) .. '|' .. ARGV[i + 2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now - ttl))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(most + 1))
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
return 1
"""

# KEYS: log.  ARGV: ttl seconds, highest score ('+inf' or a number), offset,
# count.  The newest entries first, with their scores.
_DECISION_READ = _PRELUDE + """
return redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '(' .. fmt(clock() - tonumber(ARGV[1])),
                  'WITHSCORES', 'LIMIT', tonumber(ARGV[3]), tonumber(ARGV[4]))
"""

# KEYS: blob.  ARGV: 1 if a value is expected (0: none), the expected value,
# the new value.  1 when written, 0 when the blob was not the expected one.
_SWAP_BLOB = """
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '1' and cur == ARGV[2]) or (ARGV[1] == '0' and not cur) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"""


class RedisStore(Store):
    """Store in a Redis server (``redis://[:password@]host:port/db`` or
    ``rediss://`` for TLS), or in the master that Redis Sentinels name
    (``redis+sentinel://…``, see :func:`parse_sentinel_url`)."""

    def __init__(self, url: str, settings: Optional[StoreSettings] = None) -> None:
        self.settings = s = settings or StoreSettings()
        self.url = redact_url(url)
        connection: dict[str, Any] = dict(
            socket_connect_timeout=s.connect_timeout, socket_timeout=s.op_timeout,
            # Retry connection failures only: a timed-out script may have run
            # and a retry would count it twice.
            retry=Retry(NoBackoff(), s.retries, supported_errors=(redis_lib.ConnectionError,)),
            retry_on_timeout=False, health_check_interval=0)
        self._sentinel: Optional[Sentinel] = None
        if url.split(":", 1)[0].lower() in SENTINEL_SCHEMES:
            # a StoreURL (open_store) carries the target its parse found
            target = getattr(url, "sentinel", None) or parse_sentinel_url(url)
            self._r, self._sentinel = _sentinel_client(target, s, **connection)
            self.follows_failover = True
        else:
            try:
                self._r = redis_lib.Redis.from_url(str(url), **connection)
            except ValueError as exc:
                raise ValueError(f"bad redis store URL {self.url}: {exc}") from exc
        self._p = s.key_prefix
        self._ttl_ms = int(math.ceil(s.heartbeat_ttl * 1000))
        self._hist_ms = int(math.ceil(s.lock_history_ttl * 1000))
        reg = self._r.register_script
        self._hit, self._peek, self._event = reg(_HIT), reg(_PEEK), reg(_EVENT)
        self._get_lock, self._set_lock = reg(_GET_LOCK), reg(_SET_LOCK)
        self._remove_lock, self._list_locks = reg(_REMOVE_LOCK), reg(_LIST_LOCKS)
        self._fingerprint, self._fingerprints = reg(_FINGERPRINT), reg(_FINGERPRINTS)
        self._volume = reg(_VOLUME)
        self._acquire, self._count = reg(_CONN_ACQUIRE), reg(_CONN_COUNT)
        self._alive, self._gone = reg(_ALIVE), reg(_GONE)
        self._stat_add, self._stat_read = reg(_STAT_ADD), reg(_STAT_READ)
        self._stat_series = reg(_STAT_SERIES)
        self._decision_add, self._decision_read = reg(_DECISION_ADD), reg(_DECISION_READ)
        self._swap_blob = reg(_SWAP_BLOB)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis_lib.RedisError as exc:
            raise StoreError(f"redis store {self.url}: {what}: "
                             f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._r.close()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                client.close()

    def now(self) -> float:
        with self._guard("TIME"):
            sec, usec = self._r.time()
        return sec + usec / 1e6

    # -- connection slots -----------------------------------------------------------
    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        host, pid = slot_owner(slot)
        owner = f"{host}:{pid}"
        p = self._p
        with self._guard("conn_acquire"):
            ok, n = self._acquire(
                keys=[f"{p}conn:{ip}", f"{p}alive:{owner}", f"{p}pslots:{owner}"],
                args=[slot, limit, self._ttl_ms, f"{p}alive:", ip])
        return bool(ok), int(n)

    def conn_release(self, ip: str, slot: str) -> None:
        with self._guard("conn_release"):
            self._r.srem(f"{self._p}conn:{ip}", slot)

    def conn_count(self, ip: str) -> int:
        with self._guard("conn_count"):
            return int(self._count(keys=[f"{self._p}conn:{ip}"], args=[f"{self._p}alive:"]))

    def process_alive(self, host: str, pid: int) -> None:
        owner = f"{host}:{pid}"
        with self._guard("process_alive"):
            self._alive(keys=[f"{self._p}alive:{owner}", f"{self._p}pslots:{owner}"],
                        args=[self._ttl_ms])

    def process_gone(self, host: str, pid: int) -> None:
        owner = f"{host}:{pid}"
        with self._guard("process_gone"):
            self._gone(keys=[f"{self._p}alive:{owner}", f"{self._p}pslots:{owner}"],
                       args=[f"{self._p}conn:", owner])

    # -- rate limits ------------------------------------------------------------------
    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        validate_buckets(buckets)
        if not buckets:
            return HitResult(True)
        args: list[Any] = ["1" if dry_run else "0", repr(EPSILON), SUBWINDOWS]
        for b in buckets:
            args += [b.limit, repr(float(b.window)), b.cost]
        with self._guard("hit"):
            allowed, index, wait = self._hit(
                keys=[f"{self._p}rl:{bucket_id(b)}" for b in buckets], args=args)
        if allowed:
            return HitResult(True)
        return HitResult(False, int(index), float(wait))

    def peek(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        validate_buckets(buckets)
        if not buckets:
            return []
        with self._guard("peek"):
            now, *flats = self._peek(keys=[f"{self._p}rl:{bucket_id(b)}" for b in buckets])
        t = float(now)
        return [bucket_state(b, WindowCounts(b.window, {int(flat[j]): int(flat[j + 1])
                                                      for j in range(0, len(flat), 2)}), t)
                for b, flat in zip(buckets, flats)]

    def reset(self, key_prefix: str) -> int:
        dropped = 0
        # (kind, the part of key_prefix matched after it, the reset name of a key after the kind)
        kinds: list[tuple[str, str, Callable[[str], str]]] = [
            ("rl:", key_prefix, bucket_key_of), ("ev:", key_prefix, str)]
        if key_prefix.startswith(VOLUME_PREFIX) or VOLUME_PREFIX.startswith(key_prefix):
            kinds.append(("vol:", key_prefix[len(VOLUME_PREFIX):], lambda k: VOLUME_PREFIX + k))
        with self._guard("reset"):
            for kind, rest, key_of in kinds:
                head = len(self._p) + len(kind)
                batch: list[bytes] = []
                escaped = _GLOB_SPECIAL.sub(r"\\\1", rest)
                for name in self._r.scan_iter(match=f"{self._p}{kind}{escaped}*", count=500):
                    if not key_in_prefix(key_of(name.decode("utf-8", "replace")[head:]), key_prefix):
                        continue                 # webfarm/alice when resetting webfarm/a
                    batch.append(name)
                    if len(batch) >= 500:
                        dropped += self._r.delete(*batch)
                        batch = []
                if batch:
                    dropped += self._r.delete(*batch)
        return dropped

    # -- events --------------------------------------------------------------------------
    def record_event(self, key: str, window: float) -> int:
        check_window(window)
        with self._guard("record_event"):
            return int(self._event(keys=[f"{self._p}ev:{key}", f"{self._p}seq"],
                                   args=[repr(float(window)), self.settings.max_events]))

    # -- locks -----------------------------------------------------------------------------
    @staticmethod
    def _lock(key: str, fields: Sequence[Any]) -> Optional[Lock]:
        if not fields:
            return None
        reason, since, until, by, auto = (_text(f) for f in fields)
        return Lock(key=key, reason=reason, since=float(since),
                    until=float(until) if until else None, auto_unlocks=int(auto), by=by)

    def _lock_keys(self, key: str) -> list[str]:
        return [f"{self._p}lock:{key}", f"{self._p}locks"]

    def get_lock(self, key: str) -> Optional[Lock]:
        with self._guard("get_lock"):
            fields = self._get_lock(keys=self._lock_keys(key), args=[key, self._hist_ms])
        return self._lock(key, fields)

    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        if duration is not None and not duration > 0:
            raise ValueError(f"lock duration must be > 0 or None, got {duration}")
        args: list[Union[str, int]] = [key, self._hist_ms, reason,
                                       "" if duration is None else repr(float(duration)),
                                       by, "" if max_auto_unlocks is None else int(max_auto_unlocks)]
        with self._guard("set_lock"):
            fields = self._set_lock(keys=self._lock_keys(key), args=args)
        lock = self._lock(key, fields)
        assert lock is not None
        return lock

    def remove_lock(self, key: str) -> bool:
        with self._guard("remove_lock"):
            return bool(self._remove_lock(keys=self._lock_keys(key),
                                          args=[key, self._hist_ms]))

    def list_locks(self) -> list[Lock]:
        with self._guard("list_locks"):
            flat = self._list_locks(keys=[f"{self._p}locks"],
                                    args=[f"{self._p}lock:", self._hist_ms])
        locks = []
        for i in range(0, len(flat), 6):
            lock = self._lock(_text(flat[i]), flat[i + 1:i + 6])
            if lock is not None:
                locks.append(lock)
        return sorted(locks, key=lambda lk: lk.key)

    # -- fingerprints ---------------------------------------------------------------------
    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        check_window(window)
        check_recipients(recipients)
        p = self._p
        with self._guard("fingerprint_add"):
            m, r, u = self._fingerprint(
                keys=[f"{p}fp:{fp}", f"{p}fpa:{fp}", f"{p}seq"],
                args=[member, int(recipients), repr(float(window)),
                      self.settings.max_fingerprint_entries])
        return FingerprintStats(messages=int(m), recipients=int(r), members=int(u))

    def fingerprint_add_many(self, items: Sequence[tuple[str, str, int]],
                             window: float) -> list[FingerprintStats]:
        """The items one after the other, as :meth:`fingerprint_add` each,
        in one script (one round trip instead of one per item; the bulk
        check's six fingerprints of a message are twelve items)."""
        check_window(window)
        for _, _, recipients in items:
            check_recipients(recipients)
        if not items:
            return []
        p = self._p
        keys = [f"{p}seq"]
        args: list[Any] = [repr(float(window)), self.settings.max_fingerprint_entries]
        for fp, member, recipients in items:
            keys += [f"{p}fp:{fp}", f"{p}fpa:{fp}"]
            args += [member, int(recipients)]
        with self._guard("fingerprint_add_many"):
            flat = self._fingerprints(keys=keys, args=args)
        return [FingerprintStats(messages=int(flat[i]), recipients=int(flat[i + 1]),
                                 members=int(flat[i + 2])) for i in range(0, len(flat), 3)]

    # -- volume per identity --------------------------------------------------------------------
    def volume_add(self, key: str, domains: Sequence[str], recipients: int, spec: VolumeSpec,
                   dry_run: bool = False) -> VolumeCounts:
        check_recipients(recipients)
        hashes = check_domains(domains, spec)
        with self._guard("volume_add"):
            m, r, d, n, b1, b2, b3, b4, since = self._volume(
                keys=[f"{self._p}vol:{key}"],
                args=["1" if dry_run else "0", repr(float(spec.window)), repr(float(spec.decay)),
                      int(math.ceil(spec.ttl * 1000)), spec.max_domains, spec.max_recent,
                      int(recipients), *hashes])
        return VolumeCounts(messages=int(m), recipients=int(r), domains=int(d), new_domains=int(n),
                            baseline=(float(b1), float(b2), float(b3), float(b4)),
                            since=float(since))

    # -- message statistics ---------------------------------------------------------------------
    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        args: list[Any] = [f"{self._p}st:", self.settings.max_stat_names, len(counts), len(recent)]
        for name, n in counts:
            args += [name, int(n)]
        for name, n in recent:
            args += [name, int(n)]
        for period, (width, kept) in STAT_PERIODS.items():
            args += [period, repr(float(width)), kept]
        with self._guard("stat_add"):
            self._stat_add(keys=[], args=args)

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        width, _ = STAT_PERIODS[period]
        stat_buckets(period, 0.0, count)                 # validates the arguments
        with self._guard("stat_read"):
            flat = self._stat_read(keys=[], args=[f"{self._p}st:", period, repr(float(width)), count])
        out: dict[str, int] = {}
        for i in range(0, len(flat), 2):
            name = _text(flat[i])
            out[name] = out.get(name, 0) + int(flat[i + 1])
        return out

    def stat_series(self, period: str, count: int,
                    names: Sequence[str]) -> list[dict[str, int]]:
        width, _ = STAT_PERIODS[period]
        stat_buckets(period, 0.0, count)                 # validates the arguments
        names = list(dict.fromkeys(names))
        if not names:
            return [{} for _ in range(count)]
        with self._guard("stat_series"):
            rows = self._stat_series(keys=[], args=[f"{self._p}st:", period, repr(float(width)),
                                                    count, *names])
        kinds = 2 if period == "m" else 1
        out: list[dict[str, int]] = []
        for i in range(count):
            row: dict[str, int] = {}
            for values in rows[i * kinds:(i + 1) * kinds]:
                for name, n in zip(names, values):
                    if n is not None:
                        row[name] = row.get(name, 0) + int(n)
            out.append(row)
        return out

    # -- decision log ---------------------------------------------------------------------------
    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        if not entries:
            return
        s = self.settings
        with self._guard("decision_add"):
            self._decision_add(keys=[f"{self._p}dlog", f"{self._p}seq"],
                               args=[s.max_decisions, repr(float(s.decision_ttl)),
                                     *[e.to_json() for e in entries]])

    #: Entries a decision_read call fetches at a time (each call is short
    #: enough for ``op_timeout``; the pages follow each other by score, so
    #: entries added meanwhile neither repeat nor hide older ones).
    decision_chunk = 2000

    def decision_read(self, limit: int, offset: int = 0) -> list[DecisionEntry]:
        out: list[DecisionEntry] = []
        top, skip = "+inf", 0           # next page: scores <= top, after skipping ``skip``
        offset = max(0, int(offset))
        while len(out) < limit:
            if offset:                  # by position (skipped entries may share a score)
                top, skip = "+inf", offset + len(out)
            want = min(self.decision_chunk, limit - len(out))
            with self._guard("decision_read"):
                flat = self._decision_read(keys=[f"{self._p}dlog"],
                                           args=[repr(float(self.settings.decision_ttl)), top,
                                                 skip, want])
            rows = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
            out += [DecisionEntry.from_json(bytes(m).partition(b"|")[2]) for m, _ in rows]
            if len(rows) < want:
                break
            last = rows[-1][1]
            ties = sum(1 for _, score in rows if score == last)
            if top != "+inf" and ties == len(rows) and float(top) == float(last):
                skip += ties            # the whole page shared the previous page's last score
            else:
                top, skip = _text(last), ties
        return out

    # -- blobs --------------------------------------------------------------------------------
    def put_blob(self, name: str, data: bytes) -> None:
        with self._guard("put_blob"):
            self._r.set(f"{self._p}blob:{name}", bytes(data))

    def get_blob(self, name: str) -> Optional[bytes]:
        with self._guard("get_blob"):
            value = self._r.get(f"{self._p}blob:{name}")
        # redis-py types a reply as bytes | str; this client does not decode, so it is bytes
        return None if value is None else bytes(cast(bytes, value))

    def swap_blob(self, name: str, expected: Optional[bytes], data: bytes) -> bool:
        with self._guard("swap_blob"):
            return bool(self._swap_blob(keys=[f"{self._p}blob:{name}"],
                                        args=[0 if expected is None else 1,
                                              b"" if expected is None else bytes(expected),
                                              bytes(data)]))
