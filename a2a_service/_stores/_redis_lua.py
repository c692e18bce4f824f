"""The Lua scripts of the Redis store (see ``_redis`` for the key layout and the design).

Every script gets the key prefix as ARGV[1] and builds its key names from it (queues are found at run time:
a broadcast reaches every agent of the workflow), so the store needs a standalone Redis (or a primary behind
Sentinel), not Redis Cluster. Times are Unix seconds passed by the caller as strings (``repr(float)``) and
handed to Redis as those strings: Lua numbers are formatted with 14 significant digits when passed back to
Redis, so numbers that must stay exact (times, sums) never go through a Lua number on their way back.
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]
local STATS = P .. 'stats'
local REJECTED = P .. 'rejected'
local WORKFLOWS = P .. 'workflows'
local DUE = P .. 'due'
local SEQ = P .. 'seq'
local WAKE = P .. 'wake'

local function wkey(wf) return P .. 'w/' .. wf end
local function akey(wf) return P .. 'a/' .. wf end
local function bkey(wf) return P .. 'b/' .. wf end
local function nkey(wf) return P .. 'n/' .. wf end
local function qk(kind, wf, agent) return P .. kind .. '/' .. wf .. '/' .. agent end
local function int(n) return string.format('%d', n) end

-- A queue entry: "seq|delivery_count|expires_at|payload_bytes".
local function entry(v)
  return string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
end

-- Add n to a counter of the workflow and to the same system-wide counter.
local function bump(wf, field, n)
  if n ~= 0 then
    redis.call('HINCRBY', wkey(wf), field, int(n))
    redis.call('HINCRBY', STATS, field, int(n))
  end
end

-- One copy of a message is gone; drop the shared body with the last one.
local function unref(wf, id)
  local nk = nkey(wf)
  local left = 0
  if redis.call('HEXISTS', nk, id) == 1 then
    left = redis.call('HINCRBY', nk, id, -1)
    if left <= 0 then redis.call('HDEL', nk, id) end
  end
  if left <= 0 then redis.call('HDEL', bkey(wf), id) end
end

local function touch(wf, now_s)
  redis.call('HSET', wkey(wf), 'last_updated', now_s)
  redis.call('ZADD', WORKFLOWS, now_s, wf)
end

local function get_or_create(wf, now_s, max_workflows)
  local wk = wkey(wf)
  if redis.call('EXISTS', wk) == 1 then return true end
  if redis.call('ZCARD', WORKFLOWS) >= max_workflows then return false end
  redis.call('HSET', wk, 'created_at', now_s, 'last_updated', now_s)
  redis.call('ZADD', WORKFLOWS, now_s, wf)
  redis.call('HINCRBY', STATS, 'workflows_created', 1)
  return true
end

-- Make agents known, in order. Returns nil, or the agent count when the limit refuses them (nothing added).
local function ensure_agents(wf, agents, max_agents)
  local ak = akey(wf)
  local new, seen = {}, {}
  for _, a in ipairs(agents) do
    if not seen[a] then
      seen[a] = true
      if not redis.call('ZSCORE', ak, a) then table.insert(new, a) end
    end
  end
  if #new == 0 then return nil end
  local count = redis.call('ZCARD', ak)
  if count + #new > max_agents then return count end
  for _, a in ipairs(new) do
    redis.call('ZADD', ak, redis.call('HINCRBY', wkey(wf), 'agent_seq', 1), a)
  end
  redis.call('HINCRBY', STATS, 'queues', #new)
  return nil
end

-- Leases that ended put their message back in FIFO (seq) order; expired ones are dropped and counted.
local function requeue(wf, agent, now, now_s)
  local lk = qk('l', wf, agent)
  local ids = redis.call('ZRANGEBYSCORE', lk, '-inf', now_s)
  if #ids == 0 then return 0 end
  local ek, rk, xk = qk('e', wf, agent), qk('r', wf, agent), qk('x', wf, agent)
  local back, gone = 0, 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', lk, id)
    local v = redis.call('HGET', ek, id)
    if v then
      local seq, _, x = entry(v)
      if tonumber(x) <= now then
        redis.call('HDEL', ek, id)
        unref(wf, id)
        gone = gone + 1
      else
        redis.call('ZADD', rk, seq, id)
        redis.call('ZADD', xk, x, id)
        back = back + 1
      end
    end
  end
  bump(wf, 'leased', -(back + gone))
  bump(wf, 'pending', -gone)
  bump(wf, 'expired', gone)
  bump(wf, 'redelivered', back)
  return back
end

-- Drop queued (not leased) messages past their TTL.
local function purge(wf, agent, now_s)
  local xk = qk('x', wf, agent)
  local ids = redis.call('ZRANGEBYSCORE', xk, '-inf', now_s)
  if #ids == 0 then return 0 end
  local ek, rk = qk('e', wf, agent), qk('r', wf, agent)
  for _, id in ipairs(ids) do
    redis.call('ZREM', xk, id)
    redis.call('ZREM', rk, id)
    redis.call('HDEL', ek, id)
    unref(wf, id)
  end
  bump(wf, 'pending', -#ids)
  bump(wf, 'expired', #ids)
  return #ids
end

-- The queue's next due time (earliest lease end or message expiry) in the sweep schedule.
local function reschedule(wf, agent)
  local member = wf .. '/' .. agent
  local l = redis.call('ZRANGE', qk('l', wf, agent), 0, 0, 'WITHSCORES')
  local x = redis.call('ZRANGE', qk('x', wf, agent), 0, 0, 'WITHSCORES')
  local t = l[2]
  if x[2] and ((not t) or tonumber(x[2]) < tonumber(t)) then t = x[2] end
  if t then redis.call('ZADD', DUE, t, member) else redis.call('ZREM', DUE, member) end
end

local function waited_on(wf, agent)
  return redis.call('EXISTS', qk('wt', wf, agent)) == 1
end

-- Tell every replica that these queues may have messages for their waiting receivers.
local function publish(replica, wf, agents)
  if #agents > 0 then
    redis.call('PUBLISH', WAKE, replica .. '|' .. wf .. '|' .. table.concat(agents, '|'))
  end
end

-- Remove a workflow with its queues; returns the number of messages dropped.
local function drop(wf)
  local wk = wkey(wf)
  local h = redis.call('HMGET', wk, 'pending', 'leased')
  local pending, leased = tonumber(h[1] or '0'), tonumber(h[2] or '0')
  local agents = redis.call('ZRANGE', akey(wf), 0, -1)
  local keys = {wk, akey(wf), bkey(wf), nkey(wf)}
  for _, a in ipairs(agents) do
    -- The 'wt' marker stays: receivers still waiting on this queue keep being woken (it expires by itself).
    for _, kind in ipairs({'r', 'l', 'e', 'x'}) do table.insert(keys, qk(kind, wf, a)) end
    redis.call('ZREM', DUE, wf .. '/' .. a)
    if #keys >= 400 then
      redis.call('UNLINK', unpack(keys))
      keys = {}
    end
  end
  if #keys > 0 then redis.call('UNLINK', unpack(keys)) end
  redis.call('ZREM', WORKFLOWS, wf)
  redis.call('HINCRBY', STATS, 'pending', int(-pending))
  redis.call('HINCRBY', STATS, 'leased', int(-leased))
  redis.call('HINCRBY', STATS, 'queues', int(-#agents))
  redis.call('HINCRBY', STATS, 'dropped', int(pending))
  return pending
end
"""

# ARGV: 2 workflow, 3 source, 4 target ('*' = broadcast), 5 now, 6 message id, 7 expires_at, 8 payload bytes,
# 9 body, 10 max_workflows, 11 max_agents_per_workflow, 12 max_message_queue_size, 13 replica id.
# Returns {'OK', recipient...} or {'E', code, detail}.
SEND = r"""
local wf, source, target, now_s = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(now_s)
local id, x, size, body = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local max_queue = tonumber(ARGV[12])
local replica = ARGV[13]
local wake = {}

local function reject(code, detail)
  publish(replica, wf, wake)
  redis.call('HINCRBY', REJECTED, code, 1)
  if redis.call('EXISTS', wkey(wf)) == 1 then redis.call('HINCRBY', wkey(wf), 'rejected', 1) end
  return {'E', code, detail}
end

if not get_or_create(wf, now_s, tonumber(ARGV[10])) then return reject('too_many_workflows', '') end
local broadcast = target == '*'
local known
if broadcast then known = {source} else known = {source, target} end
local count = ensure_agents(wf, known, tonumber(ARGV[11]))
if count then return reject('too_many_agents', tostring(count)) end

local targets = {}
if broadcast then
  for _, a in ipairs(redis.call('ZRANGE', akey(wf), 0, -1)) do
    if a ~= source then table.insert(targets, a) end
  end
else
  targets = {target}
end

-- All-or-nothing: check every recipient queue before adding anything.
for _, a in ipairs(targets) do
  local ek = qk('e', wf, a)
  if redis.call('HLEN', ek) >= max_queue then
    local back = requeue(wf, a, now, now_s)
    purge(wf, a, now_s)
    reschedule(wf, a)
    if back > 0 and waited_on(wf, a) then table.insert(wake, a) end
    if redis.call('HLEN', ek) >= max_queue then return reject('queue_full', a) end
  end
end

local n = #targets
if n > 0 then
  redis.call('HSET', bkey(wf), id, body)
  if n > 1 then redis.call('HSET', nkey(wf), id, n) end
end
for _, a in ipairs(targets) do
  local seq = redis.call('INCR', SEQ)
  redis.call('HSET', qk('e', wf, a), id, seq .. '|0|' .. x .. '|' .. size)
  redis.call('ZADD', qk('r', wf, a), seq, id)
  redis.call('ZADD', qk('x', wf, a), x, id)
  redis.call('ZADD', DUE, 'LT', x, wf .. '/' .. a)
  if waited_on(wf, a) then table.insert(wake, a) end
end
bump(wf, 'sent', n)
bump(wf, 'pending', n)
touch(wf, now_s)
publish(replica, wf, wake)
local out = {'OK'}
for _, a in ipairs(targets) do table.insert(out, a) end
return out
"""

# ARGV: 2 workflow, 3 agent, 4 now, 5 max_messages, 6 lease deadline ('' = at-most-once: remove), 7 max batch
# bytes, 8 max_workflows, 9 max_agents_per_workflow, 10 wait_ms (> 0: mark the queue as waited on for that
# long when nothing is returned). Returns {'OK', next lease deadline or '', (id, delivery_count, seq, body)...}
# or {'E', code, detail}.
RECEIVE = r"""
local wf, agent, now_s = ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(now_s)
local max, deadline, budget = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
if not get_or_create(wf, now_s, tonumber(ARGV[8])) then return {'E', 'too_many_workflows', ''} end
local count = ensure_agents(wf, {agent}, tonumber(ARGV[9]))
if count then return {'E', 'too_many_agents', tostring(count)} end
touch(wf, now_s)
local rk, lk, ek, xk, bk = qk('r', wf, agent), qk('l', wf, agent), qk('e', wf, agent), qk('x', wf, agent), bkey(wf)
local first = redis.call('ZRANGE', lk, 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= now then requeue(wf, agent, now, now_s) end

local out = {'OK', ''}
local leasing = deadline ~= ''
local taken, expired = 0, 0
local full = false
while (not full) and taken < max do
  local ids = redis.call('ZRANGE', rk, 0, max - taken - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local v = redis.call('HGET', ek, id)
    if not v then
      redis.call('ZREM', rk, id)
      redis.call('ZREM', xk, id)
    else
      local seq, dc, x, size = entry(v)
      if tonumber(x) <= now then
        redis.call('ZREM', rk, id)
        redis.call('ZREM', xk, id)
        redis.call('HDEL', ek, id)
        unref(wf, id)
        expired = expired + 1
      else
        budget = budget - tonumber(size)
        if budget < 0 and taken > 0 then
          full = true -- keep batches bounded; the first message always goes
          break
        end
        redis.call('ZREM', rk, id)
        redis.call('ZREM', xk, id)
        dc = tonumber(dc) + 1
        local body = redis.call('HGET', bk, id) or ''
        if leasing then
          redis.call('HSET', ek, id, seq .. '|' .. dc .. '|' .. x .. '|' .. size)
          redis.call('ZADD', lk, deadline, id)
        else
          redis.call('HDEL', ek, id)
          unref(wf, id)
        end
        taken = taken + 1
        table.insert(out, id)
        table.insert(out, dc)
        table.insert(out, seq)
        table.insert(out, body)
      end
    end
  end
end
bump(wf, 'expired', expired)
bump(wf, 'pending', -expired)
if taken > 0 then
  bump(wf, 'delivered', taken)
  if leasing then
    bump(wf, 'leased', taken)
    redis.call('ZADD', DUE, 'LT', deadline, wf .. '/' .. agent)
  else
    bump(wf, 'pending', -taken)
  end
else
  local wait_ms = tonumber(ARGV[10])
  if wait_ms > 0 then
    local mk = qk('wt', wf, agent)
    if redis.call('PTTL', mk) < wait_ms then redis.call('SET', mk, '1', 'PX', wait_ms) end
  end
  local l = redis.call('ZRANGE', lk, 0, 0, 'WITHSCORES')
  if l[2] then out[2] = l[2] end
end
return out
"""

# ARGV: 2 workflow, 3 agent, 4 now, 5.. message ids. Returns {'OK', 1|0 per id} or {'E', 'workflow_not_found', ''}.
ACK = r"""
local wf, agent, now_s = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', wkey(wf)) == 0 then return {'E', 'workflow_not_found', ''} end
local rk, lk, ek, xk = qk('r', wf, agent), qk('l', wf, agent), qk('e', wf, agent), qk('x', wf, agent)
local out = {'OK'}
local acked, unleased = 0, 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HGET', ek, id)
  local ok = 0
  if v then
    local _, dc = entry(v)
    if tonumber(dc) > 0 then -- delivered at least once (leased, or back in the queue after its lease)
      redis.call('HDEL', ek, id)
      if redis.call('ZREM', lk, id) == 1 then
        unleased = unleased + 1
      else
        redis.call('ZREM', rk, id)
        redis.call('ZREM', xk, id)
      end
      unref(wf, id)
      acked = acked + 1
      ok = 1
    end
  end
  table.insert(out, ok)
end
bump(wf, 'leased', -unleased)
bump(wf, 'pending', -acked)
bump(wf, 'acked', acked)
touch(wf, now_s)
return out
"""

# ARGV: 2 workflow, 3 agent, 4 replica id, then 6 per delivery: id, delivery_count, seq, expires_at, payload
# bytes, body. Puts back deliveries that never reached their receiver. Returns how many went back.
RELEASE = r"""
local wf, agent = ARGV[2], ARGV[3]
local n = (#ARGV - 4) / 6
if redis.call('EXISTS', wkey(wf)) == 0 or not redis.call('ZSCORE', akey(wf), agent) then
  redis.call('HINCRBY', STATS, 'dropped', int(n))
  return 0
end
local rk, lk, ek, xk, bk, nk = qk('r', wf, agent), qk('l', wf, agent), qk('e', wf, agent), qk('x', wf, agent),
  bkey(wf), nkey(wf)
local back, unleased, recreated = 0, 0, 0
for i = 5, #ARGV, 6 do
  local id, dc, seq, x, size, body = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local put = false
  if redis.call('HEXISTS', ek, id) == 1 then
    if redis.call('ZREM', lk, id) == 1 then -- leased: end the lease
      unleased = unleased + 1
      put = true
    end
  else -- removed at delivery: re-create it
    if redis.call('HEXISTS', bk, id) == 1 then
      redis.call('HSET', nk, id, tonumber(redis.call('HGET', nk, id) or '1') + 1)
    else
      redis.call('HSET', bk, id, body)
      redis.call('HDEL', nk, id)
    end
    recreated = recreated + 1
    put = true
  end
  if put then
    redis.call('HSET', ek, id, seq .. '|' .. (dc - 1) .. '|' .. x .. '|' .. size)
    redis.call('ZADD', rk, seq, id)
    redis.call('ZADD', xk, x, id)
    redis.call('ZADD', DUE, 'LT', x, wf .. '/' .. agent)
    back = back + 1
  end
end
bump(wf, 'leased', -unleased)
bump(wf, 'pending', recreated)
bump(wf, 'delivered', -back)
if back > 0 and waited_on(wf, agent) then publish(ARGV[4], wf, {agent}) end
return back
"""

# ARGV: 2 workflow. Returns nil (unknown) or {workflow hash as a flat list, agents, (queued+leased, leased)...}.
STATUS = r"""
local wf = ARGV[2]
local wk = wkey(wf)
if redis.call('EXISTS', wk) == 0 then return false end
local agents = redis.call('ZRANGE', akey(wf), 0, -1)
local queues = {}
for _, a in ipairs(agents) do
  table.insert(queues, redis.call('HLEN', qk('e', wf, a)))
  table.insert(queues, redis.call('ZCARD', qk('l', wf, a)))
end
return {redis.call('HGETALL', wk), agents, queues}
"""

# ARGV: 2 now. Returns {stats hash, rejected-by-code hash, active workflows}.
SYSTEM_STATS = r"""
redis.call('HSETNX', STATS, 'started_at', ARGV[2])
return {redis.call('HGETALL', STATS), redis.call('HGETALL', REJECTED), redis.call('ZCARD', WORKFLOWS)}
"""

# ARGV: 2 workflow. Returns the number of messages dropped, or nil for an unknown workflow.
DELETE = r"""
local wf = ARGV[2]
if redis.call('EXISTS', wkey(wf)) == 0 then return false end
local dropped = drop(wf)
redis.call('HINCRBY', STATS, 'workflows_deleted', 1)
return dropped
"""

# ARGV: 2 code, 3 workflow ('' = none).
NOTE_REJECTED = r"""
redis.call('HINCRBY', REJECTED, ARGV[2], 1)
if ARGV[3] ~= '' and redis.call('EXISTS', wkey(ARGV[3])) == 1 then
  redis.call('HINCRBY', wkey(ARGV[3]), 'rejected', 1)
end
return 1
"""

RECORD_FIELDS = 16
# ARGV: 2 now, 3 max_workflows, 4 max_agents_per_workflow, 5 records already rejected (invalid), then one group
# of 16 per (workflow, agent, model) in order of first appearance: workflow, agent ('' = none), records, routed,
# affinity_hits, failovers, routing latency sum, completed, failed, prompt_tokens, cached_tokens, cache_hits,
# index of the last routed record naming an instance (-1 = none), that instance, the model ('' = none; its
# instance is kept in the workflow hash as field "model:<model>", at most MAX_MODELS per workflow), the identity
# source of that last routed record ('' = not reported; kept as field "identity_source").
# Returns {accepted, rejected}.
RECORD = r"""
local now_s, max_wf, max_agents = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local accepted, rejected = 0, tonumber(ARGV[5])
local ok_wf, last, last_model = {}, {}, {}
local MAX_MODELS = 64  -- _validation.MAX_MODELS_PER_WORKFLOW
local totals = {total_requests = 0, affinity_hits = 0, completed_requests = 0, cache_hits = 0,
                prompt_tokens = 0, cached_tokens = 0}
local function add(wk, field, value)
  if tonumber(value) ~= 0 then redis.call('HINCRBY', wk, field, value) end
end
for i = 6, #ARGV, 16 do
  local wf, agent, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local ok = ok_wf[wf]
  if ok == nil then
    ok = get_or_create(wf, now_s, max_wf)
    ok_wf[wf] = ok
  end
  if ok and agent ~= '' and ensure_agents(wf, {agent}, max_agents) then ok = false end
  if not ok then
    rejected = rejected + n
  else
    accepted = accepted + n
    local wk = wkey(wf)
    add(wk, 'total_requests', ARGV[i + 3])
    add(wk, 'affinity_hits', ARGV[i + 4])
    add(wk, 'failovers', ARGV[i + 5])
    if tonumber(ARGV[i + 3]) > 0 then redis.call('HINCRBYFLOAT', wk, 'latency_sum', ARGV[i + 6]) end
    add(wk, 'completed_requests', ARGV[i + 7])
    add(wk, 'failed_requests', ARGV[i + 8])
    add(wk, 'prompt_tokens', ARGV[i + 9])
    add(wk, 'cached_tokens', ARGV[i + 10])
    add(wk, 'cache_hits', ARGV[i + 11])
    totals.total_requests = totals.total_requests + tonumber(ARGV[i + 3])
    totals.affinity_hits = totals.affinity_hits + tonumber(ARGV[i + 4])
    totals.completed_requests = totals.completed_requests + tonumber(ARGV[i + 7])
    totals.prompt_tokens = totals.prompt_tokens + tonumber(ARGV[i + 9])
    totals.cached_tokens = totals.cached_tokens + tonumber(ARGV[i + 10])
    totals.cache_hits = totals.cache_hits + tonumber(ARGV[i + 11])
    local index = tonumber(ARGV[i + 12])
    if index >= 0 and ((not last[wf]) or index > last[wf][1]) then last[wf] = {index, ARGV[i + 13], ARGV[i + 15]} end
    local model = ARGV[i + 14]
    if index >= 0 and model ~= '' then
      local key = wf .. '\n' .. model
      if (not last_model[key]) or index > last_model[key][1] then
        last_model[key] = {index, ARGV[i + 13], wf, 'model:' .. model}
      end
    end
    touch(wf, now_s)
  end
end
for wf, v in pairs(last) do
  redis.call('HSET', wkey(wf), 'assigned_instance', v[2])
  if v[3] ~= '' then redis.call('HSET', wkey(wf), 'identity_source', v[3]) end
end
for _, v in pairs(last_model) do
  local wk = wkey(v[3])
  if redis.call('HEXISTS', wk, v[4]) == 1 or tonumber(redis.call('HGET', wk, 'models') or '0') < MAX_MODELS then
    if redis.call('HSET', wk, v[4], v[2]) == 1 then redis.call('HINCRBY', wk, 'models', 1) end
  end
end
for field, value in pairs(totals) do
  if value ~= 0 then redis.call('HINCRBY', STATS, field, int(value)) end
end
if rejected > 0 then redis.call('HINCRBY', STATS, 'records_rejected', int(rejected)) end
return {accepted, rejected}
"""

# ARGV: 2 now, 3 limit, 4 replica id. Ends expired leases and drops expired messages of the queues that are
# due. Returns {queues visited, messages expired, messages redelivered}.
SWEEP_DUE = r"""
local now_s, replica = ARGV[2], ARGV[4]
local now = tonumber(now_s)
local members = redis.call('ZRANGEBYSCORE', DUE, '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[3]))
local expired, back = 0, 0
for _, m in ipairs(members) do
  local sep = string.find(m, '/', 1, true)
  local wf, agent = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  if redis.call('EXISTS', wkey(wf)) == 0 then
    redis.call('ZREM', DUE, m)
  else
    local b = requeue(wf, agent, now, now_s)
    expired = expired + purge(wf, agent, now_s)
    reschedule(wf, agent)
    if b > 0 then
      back = back + b
      if waited_on(wf, agent) then publish(replica, wf, {agent}) end
    end
  end
end
return {#members, expired, back}
"""

# ARGV: 2 cutoff (last activity at or before it = idle), 3 limit. Removes idle workflows; returns their ids.
SWEEP_IDLE = r"""
local ids = redis.call('ZRANGEBYSCORE', WORKFLOWS, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, wf in ipairs(ids) do drop(wf) end
if #ids > 0 then redis.call('HINCRBY', STATS, 'workflows_expired', #ids) end
return ids
"""

SCRIPTS = {
    "send": SEND,
    "receive": RECEIVE,
    "ack": ACK,
    "release": RELEASE,
    "status": STATUS,
    "stats": SYSTEM_STATS,
    "delete": DELETE,
    "note_rejected": NOTE_REJECTED,
    "record": RECORD,
    "sweep_due": SWEEP_DUE,
    "sweep_idle": SWEEP_IDLE,
}
