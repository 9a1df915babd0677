"""The money store's Redis scripts. Each touches the keys of one account's shard only (one hash slot), so it
runs atomically on one server or on the one Redis Cluster master that owns the slot (SWAP_LIMIT every shard's on one
server alone; RECORD_LIMIT and CONFIRM_LIMIT the `{llmrouter}` slot's)."""

from services.router.store.keys import RATE_COUNTER_TTL_S, TAKEN_KEPT_S, TOTAL_SUFFIX
from services.router.store.model import (
    CHARGED_TOTAL,
    HOLDS_LINGER_S,
    RELEASED_TAIL,
    SPEND_MAX_PICO,
    UNRECORDED_BATCH,
)

# Amounts are pico-dollar integers up to 2^63, beyond a Lua number's exact 2^53: the scripts that add them
# keep them as (high, low) pairs of base 10^9 digits, each exact as a Lua number.
_EXACT = """
local B = 1000000000
local function split(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end
local function add(a_hi, a_lo, b_hi, b_lo)
  local lo = a_lo + b_lo
  return a_hi + b_hi + math.floor(lo / B), lo % B
end
local function sub(a_hi, a_lo, b_hi, b_lo)
  local hi, lo = a_hi - b_hi, a_lo - b_lo
  if lo < 0 then hi, lo = hi - 1, lo + B end
  return hi, lo
end
local function less(a_hi, a_lo, b_hi, b_lo)
  return a_hi < b_hi or (a_hi == b_hi and a_lo < b_lo)
end
local function decimal(hi, lo)
  return hi > 0 and string.format('%d%09d', hi, lo) or string.format('%d', lo)
end
"""

# What a budget's spend is checked as (ADMIT, EXTEND): the greater of its period's spend and the next period's. A charge
# lands in the period it settles in (model.py, landing_period), which may be the next by then: an admission whose
# period was named before the end and that runs after it (the store's round trip, a resize sent again, a router's clock
# a moment behind another's) meets charges landed in the next period already, where its own will land too.
# A key budget's spend in a period also counts what the key carried into the shard for it (keys.py, AccountKeys.carried:
# its spend elsewhere when an operator moved it here, key_move.py); a tenant budget carries nothing (nil).
_SPENT = """
local function spent(key, next_key, carried, next_carried)
  local u_hi, u_lo = split(redis.call('GET', key) or '0')
  local n_hi, n_lo = split(redis.call('GET', next_key) or '0')
  if carried then
    u_hi, u_lo = add(u_hi, u_lo, split(redis.call('GET', carried) or '0'))
    n_hi, n_lo = add(n_hi, n_lo, split(redis.call('GET', next_carried) or '0'))
  end
  if less(u_hi, u_lo, n_hi, n_lo) then return n_hi, n_lo end
  return u_hi, u_lo
end
"""

# Each holds set's running total (keys.py, hold_total: a hash beside the set, in its slot): 'pico', the sum of its
# members' pico-dollars (each member leads with its pico, of either form), 'count', its members, and 'epoch', the
# shard's hold-totals epoch it was built in. Every script that adds or removes a hold does it through hold_add and
# hold_remove, which move the total by what ZADD or ZREM actually changed: a settle retried, a hold settled twice or
# reaped after its charge moves it once. A total is trusted only while its epoch is the shard's and its count is
# the set's (ZCARD): one a router of the version before left behind (it adds and removes holds without one), a set
# that expired under it, or an epoch an operator bumped (money_check.py, bump-hold-totals-epoch) is dropped as its
# set changes and rebuilt from a scan of the set when admission next reads it (trust). EPOCH is set by each script
# from its shard's epoch key before any of these run; '0' before any bump.
_TOTALS = f"""
local EPOCH = '0'
local function total_of(holds) return holds .. '{TOTAL_SUFFIX}' end
local function member_pico(member)
  local pico = string.match(member, '^(%d+):')
  if not pico then error('a hold member without its pico: ' .. member) end
  return split(pico)
end
local function scanned(holds)
  local hi, lo, n = 0, 0, 0
  for _, member in ipairs(redis.call('ZRANGE', holds, 0, -1)) do
    local h_hi, h_lo = split(string.match(member, '^(%d+):'))
    hi, lo = add(hi, lo, h_hi, h_lo)
    n = n + 1
  end
  return hi, lo, n
end
-- The set's total when it can be trusted (an empty set's is 0 with or without one), else nil.
local function recorded(holds)
  local total = redis.call('HMGET', total_of(holds), 'pico', 'count', 'epoch')
  local size = redis.call('ZCARD', holds)
  if not total[1] then
    if size == 0 then return 0, 0, 0 end
    return nil
  end
  if total[3] ~= EPOCH or tonumber(total[2]) ~= size then return nil end
  local hi, lo = split(total[1])
  return hi, lo, size
end
local function record(holds, hi, lo, n)
  local total = total_of(holds)
  if n == 0 then
    redis.call('DEL', total)
    return
  end
  redis.call('HSET', total, 'pico', decimal(hi, lo), 'count', n, 'epoch', EPOCH)
  local at = redis.call('PEXPIRETIME', holds)
  if at > 0 then redis.call('PEXPIREAT', total, at) end
end
-- What a holds set holds, in pico-dollars: by its total (rebuilt from a scan when it cannot be trusted), or, with
-- `trust` false (ROUTER_HOLD_TOTALS=maintain), by the scan, its total left as it is.
local function held_sum(holds, trust)
  if trust then
    local hi, lo = recorded(holds)
    if hi then return hi, lo end
  end
  local hi, lo, n = scanned(holds)
  if trust then record(holds, hi, lo, n) end
  return hi, lo
end
-- A total not trusted is dropped as its set changes: its count could come to match the set's again by chance.
local function hold_add(holds, expiry, member)
  local p_hi, p_lo = member_pico(member)
  local hi, lo, n = recorded(holds)
  if not hi then redis.call('DEL', total_of(holds)) end
  if redis.call('ZADD', holds, expiry, member) == 1 and hi then
    hi, lo = add(hi, lo, p_hi, p_lo)
    record(holds, hi, lo, n + 1)
  end
end
local function hold_remove(holds, member)
  local p_hi, p_lo = member_pico(member)
  local hi, lo, n = recorded(holds)
  if not hi then redis.call('DEL', total_of(holds)) end
  if redis.call('ZREM', holds, member) == 1 and hi then
    hi, lo = sub(hi, lo, p_hi, p_lo)
    record(holds, hi, lo, n - 1)
  end
end
-- For a script's checks before its first write (_PERMITTED, and the key types): what it may do to the totals.
local function total_commands(holds)
  local total = total_of(holds)
  return {{{{'HMGET', total, 'pico'}}, {{'HSET', total, 'pico', '0'}}, {{'DEL', total}}, {{'PEXPIREAT', total, '0'}},
    {{'EXPIREAT', total, '0'}}, {{'ZCARD', holds}}, {{'PEXPIRETIME', holds}}}}
end
local function totals_typed(sets)
  for _, holds in ipairs(sets) do
    local found = redis.call('TYPE', total_of(holds))['ok']
    if found ~= 'none' and found ~= 'hash' then return redis.error_reply('WRONGTYPE a holds total') end
  end
end
"""

# The hold the store holds for a request: the one its pending charge records. A router may know a smaller one: when
# the reply to a hold's extension is lost (a dropped connection, a caller that left) the store may have grown it
# all the same. Settling or growing a hold acts on this one, so none lingers, whatever reply went missing. A hold
# member is '<pico>:<tenant hex>:<request id>' (keys.py, hold_member); the pending record is JSON, its hold_pico
# written by the router's json.dumps.
# Routers from before members named the tenant wrote '<pico>:<request id>'. No script drops such a hold: which
# request one stands for cannot be told from a member of the new form (request '<tenant hex>:r' of the old form is
# request 'r' of the new), and a guess would drop another request's hold. So each is counted (admission, extension)
# until its score, its expiry, passes: budgets are over-counted during a rolling upgrade, never overspent.
# The pico still leads, behind no other ':', so those routers sum and grow members of either form alike.
_HELD = """
local function held_member(pending_key, field, member)
  local record = redis.call('HGET', pending_key, field)
  local pico = record and string.match(record, '"hold_pico":%s*(%d+)')
  if not pico then return member end
  return pico .. string.match(member, '^%d+(:.*)$')
end
local function drop_hold(tenant_holds, key_holds, members)
  for _, member in ipairs(members) do
    for _, holds in ipairs({tenant_holds, key_holds}) do hold_remove(holds, member) end
  end
end
"""

# A holds set outlives its last hold (scores are expiries) by HOLDS_LINGER_S: a short hold added beside a deferred one
# (a provider batch line's, a day long) must not cut the set's life short, and a hold past its expiry is still
# counted while its pending charge is open (_OPEN), which the reconciler settles within ROUTER_PENDING_STALE_S.
_OUTLIVE = f"""
local function outlive_holds(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local at = math.ceil(tonumber(last[2])) + {HOLDS_LINGER_S}
  redis.call('EXPIREAT', key, at)
  redis.call('EXPIREAT', key .. '{TOTAL_SUFFIX}', at)  -- its running total goes with it (_TOTALS)
end
"""

# A hold whose expiry has passed is still counted while the pending charge it stands for is open (with that very
# hold): its charge may wait in a router's outbox through a store outage longer than the hold, and a request
# admitted before the replay would spend the same budget again. Such a hold goes when its charge settles: the
# outbox replay, or at the latest the reconciler (ROUTER_PENDING_STALE_S; a dead router's after its heartbeat TTL),
# which charges it at its hold. Only holds that stand for no open pending charge go at their expiry: those a
# router of a version before left behind (a member without the tenant, or one its scripts did not drop).
# The pending field of a member '<pico>:<tenant hex>:<request id>' is Python's json.dumps([tenant, request id])
# (model.py, pending_field: ensure_ascii, ', ' between items), rebuilt here; nil for what no router writes.
_OPEN = r"""
local SHORT = {[8] = '\\b', [9] = '\\t', [10] = '\\n', [12] = '\\f', [13] = '\\r', [34] = '\\"', [92] = '\\\\'}
local function u4(n)
  return '\\u' .. string.format('%04x', n)
end
local function json_string(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c, cp, len = string.byte(s, i), 0, 0
    if c < 128 then cp, len = c, 1
    elseif c >= 194 and c < 224 then cp, len = c - 192, 2
    elseif c >= 224 and c < 240 then cp, len = c - 224, 3
    elseif c >= 240 and c < 245 then cp, len = c - 240, 4
    else return nil end
    for j = i + 1, i + len - 1 do
      local d = string.byte(s, j)
      if not d or d < 128 or d > 191 then return nil end
      cp = cp * 64 + d - 128
    end
    if (len == 3 and cp < 2048) or (len == 4 and (cp < 65536 or cp > 1114111)) or (cp >= 55296 and cp < 57344) then
      return nil
    end
    i = i + len
    if SHORT[cp] then out[#out + 1] = SHORT[cp]
    elseif cp >= 32 and cp < 127 then out[#out + 1] = string.char(cp)
    elseif cp < 65536 then out[#out + 1] = u4(cp)
    else
      cp = cp - 65536
      out[#out + 1] = u4(55296 + math.floor(cp / 1024)) .. u4(56320 + cp % 1024)
    end
  end
  return '"' .. table.concat(out) .. '"'
end
local function pending_of(member)
  local pico, tenant_hex, request_id = string.match(member, '^(%d+):(%x*):(.*)$')
  if not pico or #tenant_hex % 2 == 1 then return nil end
  local tenant = string.gsub(tenant_hex, '..', function(h) return string.char(tonumber(h, 16)) end)
  local t, r = json_string(tenant), json_string(request_id)
  if not t or not r then return nil end
  return pico, '[' .. t .. ', ' .. r .. ']'
end
-- Whether a hold stands for an open pending charge (in `pending_key`, its shard's) with that very hold.
local function open_hold(member, pending_key)
  local pico, field = pending_of(member)
  local record = field and redis.call('HGET', pending_key, field)
  return record and string.match(record, '"hold_pico":%s*(%d+)') == pico
end
"""

# The reaper: admission drops the holds past their expiry that stand for no open pending charge, each through
# hold_remove, so its total loses it once (a second drop of the same member removes nothing).
_REAP = """
local function drop_expired(holds, pending_key, now)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
    if not open_hold(member, pending_key) then hold_remove(holds, member) end
  end
end
"""

# A script stops at its first error keeping what it wrote before, and an ACL may revoke one command it runs (Redis 7.0
# words that as a bare ERR): each script asks first whether the router's user may run every write it is about to make,
# and is refused before any as NOPERM, the store refusing the router (redis_store.py, _reachable), never half-done.
_PERMITTED = """
local function denied(writes)
  for _, write in ipairs(writes) do
    if not redis.acl_check_cmd(unpack(write)) then
      return redis.error_reply('NOPERM the router may not ' .. write[1] .. ' ' .. write[2] .. ' (ACL)')
    end
  end
end
"""

# The shard's list of uncounted charges (keys.py, uncounted_reconciled) serves the metrics alone: a key of another type
# there (hand-edited) is left alone by the scripts that write it (CHARGE, COUNT_ONCE), never refusing a charge or its
# maker's take; the reconciler's sweep, which reads it, reports it.
_LISTED = """
local LISTABLE = {none = true, zset = true}
local CLAIMABLE = {none = true, hash = true}
"""

# Scripts that take new memory (admission, a hold grown) are refused whole when the store is full (OOM under
# noeviction: a flagged script is checked before it runs, never half-way); a charge or release of what was
# already admitted must land even then (allow-oom): what was served is always paid for. Redis 7 or newer.
_MAY_GROW = "#!lua\n"
_MUST_LAND = "#!lua flags=allow-oom\n"

# A rate counter (keys.py, AccountKeys.rate) counts one window's requests; it lives a little past its window, as does
# the set of the count ids counted in it (AccountKeys.rate_counted): a request is counted once a window, whichever of
# its admissions (one resized after a budget refusal) or, a Decide, its count carries its id, and whatever resends of
# them a Redis Cluster client makes after a lost reply. A count id of '' is counted each time it is sent.
_RATE = f"""
local RATE_TTL = {RATE_COUNTER_TTL_S}
local function already_counted(counted, id)
  return id ~= '' and redis.call('SISMEMBER', counted, id) == 1
end
local function count_writes(rate, counted, id)
  return {{{{'INCR', rate}}, {{'EXPIRE', rate, tostring(RATE_TTL)}}, {{'SADD', counted, id}},
    {{'EXPIRE', counted, tostring(RATE_TTL)}}}}
end
-- A tokens counter (keys.py, AccountKeys.tokens) counts the tokens charged in one window, for the tokens-per-minute
-- limit; as the rate counter, it lives a little past its window. One of another type or not a count (hand-edited)
-- is left alone: a rate limit never stands in the way of a charge. nil: none is set.
local function tokens_counted(tokens)
  local found = redis.call('TYPE', tokens)['ok']
  if found == 'none' then return 0 end
  if found ~= 'string' then return nil end
  local value = redis.call('GET', tokens)
  return string.match(value, '^%d+$') and tonumber(value) or nil
end
local function count_request(rate, counted, id)
  if redis.call('INCR', rate) == 1 then redis.call('EXPIRE', rate, RATE_TTL) end
  if id ~= '' then
    redis.call('SADD', counted, id)
    redis.call('EXPIRE', counted, RATE_TTL)
  end
end
"""

ADMIT = (
    _MAY_GROW
    + f"local RELEASED_TAIL = '{RELEASED_TAIL}'\n"
    + _RATE
    + _EXACT
    + _SPENT
    + _TOTALS
    + _OUTLIVE
    + _OPEN
    + _REAP
    + _PERMITTED
    + """
-- KEYS: rate, used id, tenant spend, tenant holds, key spend, key holds, limit overrides, pending charges,
--       charged id, undone marker (of this admission's nonce), provider batches, models, the spend and holds the
--       key budget is checked against (keys.py, key_budget: a keyless request's tenant's), prices, the shard's
--       hold-totals epoch, the count ids counted in the rate counter's window, the tokens counter of that window,
--       the shard's key-moves token (keys.py, key_moves_key), the next period's tenant spend and spend the key budget
--       is checked against (_SPENT), what the key carried into the shard for the period and the next (_SPENT)
-- ARGV: per minute, tenant default limit, key default limit ('' = none), now, hold member, hold expiry, id ttl,
--       hold pico, pending field, pending record, tenant limit field, key limit field, provider batch line ('1'),
--       the model the request is admitted for ('' = none), its prices (model.py, prices_value; '' = none), the
--       admitting key's id (hex; what the used id keeps), '1' to count the holds by their totals (else by a scan),
--       the request's count id (_RATE; '' = none), tokens per minute (0 = no limit), the key-moves token its key's
--       binding was read under ('' = a key bound to no tenant: unchecked)
EPOCH = redis.call('GET', KEYS[16]) or '0'
-- Undone before it ran (it reached the store after the router gave up on it and undid it): nothing happens.
if redis.call('EXISTS', KEYS[10]) == 1 then return {'undone', '0', '0', ''} end
local recorded = redis.call('HGET', KEYS[8], ARGV[9])
-- The very same admission sent again (a Redis Cluster client resends a command whose reply it lost; the record
-- holds its admission time): it was admitted, once.
if recorded == ARGV[10] then return {'', '0', '0', ''} end
-- Its key's binding was read before a key move reached this shard: it may serve another tenant now. Nothing happens;
-- the router reads the binding again. After the resend above: an admission made before the move stays made.
if ARGV[20] ~= '' and (redis.call('GET', KEYS[19]) or '0') ~= ARGV[20] then return {'moved', '0', '0', ''} end
-- Another request with this id is a duplicate while the id is used, in flight, or charged: the charged marker
-- outlives the used one by the request's run time, and a request admitted then would be served and its charge
-- refused as a repeat. Its refusal says what the id was charged in all, when the marker has it (model.py,
-- CHARGED_TOTAL), and the hold of its charge still open: '' for none. Only to the key that used the id (the used id
-- keeps it): request ids are per tenant, and another key of the tenant learns nothing of that request. '1', from a
-- router of the version before, names no key: any is told, as that version told it; told none, the key that sent it
-- (a batch line sent again after its edge died mid-upgrade) was told nothing of a request the ledger charges.
-- Released (model.py, RELEASED): every admission of the id was charged 0 and delivered nothing, and none is in flight;
-- the key that used it may send it again (or any, once an undone admission of it freed the used id: UNDO). Its
-- markers are kept: a charge of an admission before, replayed, is known as made.
local released = not recorded and string.sub(redis.call('GET', KEYS[9]) or '', -#RELEASED_TAIL) == RELEASED_TAIL
if released then
  local user = redis.call('GET', KEYS[2])
  released = not user or user == ARGV[16]
end
if not released and (recorded or redis.call('EXISTS', KEYS[2], KEYS[9]) > 0) then
  local user = redis.call('GET', KEYS[2])
  if user ~= ARGV[16] and user ~= '1' then return {'duplicate', '0', '0', '', '', ''} end
  local charged = string.match(redis.call('GET', KEYS[9]) or '', ' 1::pico=(%d+)$')
  local held = recorded and string.match(recorded, '"hold_pico":%s*(%d+)')
  return {'duplicate', '0', '0', '', charged or '', held or ''}
end
-- Every request that gets this far counts against the rate limit, admitted or refused for its budget: one refused
-- was routed (the shared classifier scored it) as one admitted was. Once: one counted already (its admission before
-- this one was refused for its budget, or this is a resend) is neither counted again nor refused for its own count.
local per_minute = tonumber(ARGV[1])
local to_count = per_minute > 0 and not already_counted(KEYS[17], ARGV[18])
if to_count and tonumber(redis.call('GET', KEYS[1]) or '0') >= per_minute then return {'rate', '0', '0', ''} end
-- The tokens limit is on the tokens charged so far this minute, as LiteLLM's tpm_limit: no prediction of this one's.
local tokens_per_minute = tonumber(ARGV[19])
if tokens_per_minute > 0 and (tokens_counted(KEYS[18]) or 0) >= tokens_per_minute then
  return {'tokens', '0', '0', ''}
end
local budgets = {{KEYS[3], KEYS[4], ARGV[2], ARGV[11], 'tenant', KEYS[20]},
  {KEYS[13], KEYS[14], ARGV[3], ARGV[12], 'key', KEYS[21], KEYS[22], KEYS[23]}}
local held = {KEYS[4], KEYS[6]}  -- where the hold goes: the tenant's and the key id's
local function kept(key, value) return value ~= '' and {'HSET', key, ARGV[9], value} or {'HDEL', key, ARGV[9]} end
local writes = {{'SET', KEYS[2], ARGV[16]}, {'PEXPIREAT', KEYS[2], '0', 'GT'}, {'HSET', KEYS[8], ARGV[9], ARGV[10]},
  {ARGV[13] == '1' and 'HSET' or 'HDEL', KEYS[11], ARGV[9], ''}, kept(KEYS[12], ARGV[14]), kept(KEYS[15], ARGV[15])}
if to_count then
  for _, write in ipairs(count_writes(KEYS[1], KEYS[17], ARGV[18])) do writes[#writes + 1] = write end
end
for _, holds in ipairs(held) do
  for _, write in ipairs({{'ZREM', holds, ARGV[5]}, {'ZADD', holds, ARGV[6], ARGV[5]}, {'EXPIREAT', holds, '0'}}) do
    writes[#writes + 1] = write
  end
  for _, command in ipairs(total_commands(holds)) do writes[#writes + 1] = command end
end
-- A key it writes holding another type fails it here, before any write, as a charge (CHARGE): failing later, it left
-- its id used, its hold and its pending charge recorded, which the reconciler charged at the hold, nothing served.
local typed = {[4] = 'zset', [6] = 'zset', [8] = 'hash', [11] = 'hash', [12] = 'hash', [15] = 'hash', [17] = 'set'}
for i, kind in pairs(typed) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= kind then return redis.error_reply('WRONGTYPE a key the admission writes') end
end
local mistyped = totals_typed(held)
if mistyped then return mistyped end
local refused = denied(writes)
if refused then return refused end
for _, holds in ipairs(held) do drop_expired(holds, KEYS[8], ARGV[4]) end
-- Trusting totals, each set this admission writes has one it can trust from here on: rebuilt now when stale (once per
-- set and epoch), the key set's too when its budget has no limit to read it by.
if ARGV[17] == '1' then
  for _, holds in ipairs(held) do held_sum(holds, true) end
end
-- The limit minus what is used, or nothing when that is over it.
local function left(l_hi, l_lo, u_hi, u_lo)
  if less(l_hi, l_lo, u_hi, u_lo) then return 0, 0 end
  local d_hi, d_lo = l_hi - u_hi, l_lo - u_lo
  if d_lo < 0 then d_hi, d_lo = d_hi - 1, d_lo + B end
  return d_hi, d_lo
end
-- r: what the tightest budget has left after spend and holds; s: what the tightest after spend alone has left (it
-- may be the other budget: s_name).
local tightest, r_hi, r_lo, s_name, s_hi, s_lo = '', nil, nil, '', nil, nil
for _, b in ipairs(budgets) do
  local limit = redis.call('HGET', KEYS[7], b[4]) or b[3]
  if limit ~= '' then
    local l_hi, l_lo = split(limit)
    local u_hi, u_lo = spent(b[1], b[6], b[7], b[8])
    local spend_hi, spend_lo = left(l_hi, l_lo, u_hi, u_lo)
    if s_hi == nil or less(spend_hi, spend_lo, s_hi, s_lo) then
      s_name, s_hi, s_lo = b[5], spend_hi, spend_lo
    end
    local h_hi, h_lo = held_sum(b[2], ARGV[17] == '1')
    u_hi, u_lo = add(u_hi, u_lo, h_hi, h_lo)
    local left_hi, left_lo = left(l_hi, l_lo, u_hi, u_lo)
    if r_hi == nil or less(left_hi, left_lo, r_hi, r_lo) then tightest, r_hi, r_lo = b[5], left_hi, left_lo end
  end
end
if r_hi ~= nil then
  local h_hi, h_lo = split(ARGV[8])
  if less(r_hi, r_lo, h_hi, h_lo) then
    if to_count then count_request(KEYS[1], KEYS[17], ARGV[18]) end
    return {tightest, decimal(r_hi, r_lo), decimal(s_hi, s_lo), s_name}
  end
end
if to_count then count_request(KEYS[1], KEYS[17], ARGV[18]) end
redis.call('SET', KEYS[2], ARGV[16], 'EX', ARGV[7])
-- The used id lives at least as long as the charged marker kept (CHARGE): a duplicate's refusal tells that key alone.
if released then redis.call('PEXPIREAT', KEYS[2], redis.call('PEXPIRETIME', KEYS[9]), 'GT') end
for _, holds in ipairs(held) do
  hold_add(holds, ARGV[6], ARGV[5])
  outlive_holds(holds)
end
redis.call('HSET', KEYS[8], ARGV[9], ARGV[10])
-- A provider batch line's batch is '' until recorded: so a line of this version is never taken for one of the
-- version before (no entry), and a batch left by that version's charge (it knew no batches hash) is dropped.
if ARGV[13] == '1' then redis.call('HSET', KEYS[11], ARGV[9], '') else redis.call('HDEL', KEYS[11], ARGV[9]) end
-- Its model: a provider batch line's collect is priced from it, whatever model the caller names, and a charge the
-- reconciler settles at its hold names it in the ledger.
if ARGV[14] ~= '' then redis.call('HSET', KEYS[12], ARGV[9], ARGV[14]) else redis.call('HDEL', KEYS[12], ARGV[9]) end
-- Its prices: a provider batch line's collect charges at them, whatever the registry says by then.
if ARGV[15] ~= '' then redis.call('HSET', KEYS[15], ARGV[9], ARGV[15]) else redis.call('HDEL', KEYS[15], ARGV[9]) end
return {'', '0', '0', ''}
"""
)

# One request that is not admitted (a Decide: routed, nothing held) counted in ADMIT's rate counter, by its rules.
COUNT_REQUEST = (
    _MAY_GROW
    + _RATE
    + _PERMITTED
    + """
-- KEYS: rate, the count ids counted in its window, the tokens counter of that window, the shard's key-moves token
-- ARGV: per minute (0 = no limit), the request's count id ('' = none), tokens per minute (0 = no limit), the key-moves
--       token its key's binding was read under ('' = unchecked), as ADMIT's
-- Returns '' when let through (counted now, or before: a Redis Cluster client resent it after its reply was lost),
-- else the limit reached, 'rate' (the window's requests used up) or 'tokens', or 'moved' as ADMIT (nothing counted).
if already_counted(KEYS[2], ARGV[2]) then return '' end
if ARGV[4] ~= '' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[4] then return 'moved' end
local per_minute, tokens_per_minute = tonumber(ARGV[1]), tonumber(ARGV[3])
if per_minute > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= per_minute then return 'rate' end
if tokens_per_minute > 0 and (tokens_counted(KEYS[3]) or 0) >= tokens_per_minute then return 'tokens' end
if per_minute == 0 then return '' end
local found = redis.call('TYPE', KEYS[2])['ok']
if found ~= 'none' and found ~= 'set' then return redis.error_reply('WRONGTYPE a key the count writes') end
-- Denied its EXPIRE after its INCR, it would leave a counter that never expires.
local refused = denied(count_writes(KEYS[1], KEYS[2], ARGV[2]))
if refused then return refused end
count_request(KEYS[1], KEYS[2], ARGV[2])
return ''
"""
)

CHARGE = (
    _MUST_LAND
    + _EXACT
    + _TOTALS
    + _HELD
    + _PERMITTED
    + _RATE
    + _LISTED
    + f"local SPEND_MAX = {SPEND_MAX_PICO}\nlocal UNRECORDED_BATCH = '{UNRECORDED_BATCH}'\n"
    + f"local RELEASED_TAIL = '{RELEASED_TAIL}'\nlocal ZERO_TAIL = ' {CHARGED_TOTAL}0'\n"
    + """
-- KEYS: charged marker, tenant spend, key spend, ledger, tenant holds, key holds, pending charges, provider batches,
--       models, prices, used id, the shard's hold-totals epoch, the tokens counter of the charge's minute, reconciled
--       (the reconciler's, keys.py), the uncounted charge (keys.py, uncounted), the shard's listed uncounted charges
--       (keys.py, uncounted_reconciled)
-- ARGV: pico, marker ttl, record, spend ttl, hold member, pending field, late ('1': only if still pending),
--       the charge's id ('' for none), its admission's nonce ('' for none), the reconciler's: the pending record
--       as its sweep read it ('' for none), the tokens charged (input and output), and the reconciler's: what it
--       charges (model.py, Reconciled; '' for none: not the reconciler's, or an admission without a nonce), until
--       when the admission's charges are marked (Hold.marked_until, Unix ms; 0 for not known), '1' to release the
--       request id (model.py, RELEASED; '' or none: not)
EPOCH = redis.call('GET', KEYS[12]) or '0'
-- Late: landing only while its pending charge is open. Asked so ('1': the reconciler's, a provider batch line's
-- collect, an outbox line of a version before), or judged here: past the admission's marked_until by this store's
-- clock, which expires the markers, and until which every charge of the admission kept its marker (below). Within it,
-- a charge that finds no pending charge and no marker is one whose admission the store lost: still paid. So a router
-- whose clock stood still while it was frozen (a suspended host, a paused VM), or one whose request id TTL is not the
-- admitting router's, never takes a charge the reconciler settled, its marker expired since, for one of those.
local MARKED = tonumber(ARGV[13]) or 0
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local late = ARGV[7] == '1' or (MARKED > 0 and now_ms >= MARKED)
-- One PEXPIREAT refuses (past 2^63 - 1 ms: a corrupted or hostile pending record or outbox line) is refused here,
-- before any write: failing at that PEXPIREAT below, the marker was set and nothing charged, and this charge sent
-- again took the marker for its own landing.
if MARKED > 0 and not (string.match(ARGV[13], '^%d+$') and #ARGV[13] <= 18) then
  return redis.error_reply('ERR marked_until is no expiry time Redis takes')
end
-- Returns 1 when charged now, or before by this very charge (its id in the marker: its reply was lost); else 0.
-- The charged marker: 'batch:<id> 1::pico=<what it was charged>' for a provider batch line's; else one entry per charge
-- that landed on the request id, space-separated, each '1:<charge id>:<admission nonce>' (either may be ''), or '1' or
-- '1:<charge id>' as written by routers of versions before (which name no admission), then '1::pico=<what they charged
-- in all>' while every one is known (model.py, CHARGED_TOTAL). More than one entry only when a store that lost an
-- admission let the request id in again (model.py, charged_marker).
local met = redis.call('GET', KEYS[1])
local met_until = met and redis.call('PEXPIRETIME', KEYS[1]) or -1  -- read before any write (below)
local function entries_of(value)
  if not value or string.sub(value, 1, 6) == 'batch:' then return {} end
  local found = {}
  for entry in string.gmatch(value, '%S+') do
    if string.sub(entry, 1, 8) ~= '1::pico=' then found[#found + 1] = entry end
  end
  return found
end
-- This very charge, made before (replayed from the outbox, or resent after its reply was lost): made, once.
if ARGV[8] ~= '' then
  for _, entry in ipairs(entries_of(met)) do
    if entry == '1:' .. ARGV[8] or string.match(entry, '^1:([^:]*):') == ARGV[8] then return 1 end
  end
end
-- The reconciler settles only the very record it swept: not one released, charged, grown or undone and admitted
-- again since (the next sweep meets that one), so it never charges what its owner settled meanwhile.
if ARGV[10] ~= '' and redis.call('HGET', KEYS[7], ARGV[6]) ~= ARGV[10] then return 0 end
local pending = redis.call('HGET', KEYS[7], ARGV[6])
-- The marker keeps the provider batch recorded for the request ('batch:<id>'; '1' for none, '1:<charge id>' for
-- none and a charge that named itself; model.py, charged_marker): a collect of another batch naming the request
-- then reads nothing of that batch's answer for it.
local marker = ARGV[8] ~= '' and ('1:' .. ARGV[8]) or '1'
if ARGV[9] ~= '' then marker = '1:' .. ARGV[8] .. ':' .. ARGV[9] end
-- A script stops at its first error keeping what it wrote before: a key it writes holding another type (or a spend
-- that is no integer, or one the charge would take past INCRBY's 2^63 - 1) fails it here, before any write. Failing
-- later, it left the charged marker set and nothing added, and the charge sent again took that marker for its own
-- landing: never charged, never dead-lettered. Lua numbers are doubles: the bound keeps a margin below 2^63 - 1.
for i = 2, 3 do
  local spend = redis.call('GET', KEYS[i])
  if spend and not string.match(spend, '^%-?%d+$') then return redis.error_reply('ERR spend is no integer') end
  if tonumber(spend or '0') + tonumber(ARGV[1]) > SPEND_MAX then
    return redis.error_reply('ERR spend would overflow: ' .. KEYS[i] .. ' would pass ' .. SPEND_MAX .. ' pico-USD')
  end
end
local typed = {[4] = 'stream', [5] = 'zset', [6] = 'zset', [8] = 'hash', [9] = 'hash', [10] = 'hash'}
for i, kind in pairs(typed) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= kind then return redis.error_reply('WRONGTYPE a key the charge writes') end
end
local mistyped = totals_typed({KEYS[5], KEYS[6]})
if mistyped then return mistyped end
-- Nor may an ACL deny one of its writes half-way (_PERMITTED): that is the store refusing the router, not the charge's
-- fault, so it is told as NOPERM, which holds the charge in the outbox.
local writes = {{'HDEL', KEYS[7], ARGV[6]}, {'HDEL', KEYS[8], ARGV[6]}, {'HDEL', KEYS[9], ARGV[6]},
  {'HDEL', KEYS[10], ARGV[6]}, {'ZREM', KEYS[5], ARGV[5]}, {'ZREM', KEYS[6], ARGV[5]}, {'SET', KEYS[1], marker},
  {'INCRBY', KEYS[2], ARGV[1]}, {'INCRBY', KEYS[3], ARGV[1]}, {'EXPIRE', KEYS[2], '1'}, {'EXPIRE', KEYS[3], '1'},
  {'XADD', KEYS[4], '*', 'record', ARGV[3]}, {'EXPIRE', KEYS[11], ARGV[2]}, {'INCRBY', KEYS[13], ARGV[11]},
  {'EXPIRE', KEYS[13], tostring(RATE_TTL)}, {'PEXPIREAT', KEYS[1], '0', 'GT'}}
for _, holds in ipairs({KEYS[5], KEYS[6]}) do
  for _, command in ipairs(total_commands(holds)) do writes[#writes + 1] = command end
end
if ARGV[12] ~= '' then writes[#writes + 1] = {'SET', KEYS[14], ARGV[12]} end
if ARGV[8] ~= '' then writes[#writes + 1] = {'SET', KEYS[15], ARGV[8]} end
if MARKED > 0 then
  for _, key in ipairs({KEYS[1], KEYS[11], KEYS[14]}) do writes[#writes + 1] = {'PEXPIREAT', key, ARGV[13], 'GT'} end
end
local listing = ARGV[8] ~= '' and LISTABLE[redis.call('TYPE', KEYS[16])['ok']]
if listing then writes[#writes + 1] = {'ZADD', KEYS[16], '0', ''} end
local refused = denied(writes)
if refused then return refused end
-- A pending charge of another admission of the request id (admitted again once its markers expired, while this
-- charge waited in an outbox, or once a store that lost this admission freed the id) is a request in flight: only
-- its own charge settles it, and its hold stays.
local own = pending and ARGV[9] ~= '' and string.match(pending, '"nonce":%s*"([^"]*)"') == ARGV[9]
if pending and ARGV[9] ~= '' and not own then
  if late then return 0 end
else
  -- A line with no batch recorded ('' since its admission) is marked so (model.py, UNRECORDED_BATCH): a collect of it
  -- again tells its charge.
  local batch = redis.call('HGET', KEYS[8], ARGV[6])
  if batch then marker = 'batch:' .. (batch ~= '' and batch or UNRECORDED_BATCH) end
  redis.call('HDEL', KEYS[8], ARGV[6])
  redis.call('HDEL', KEYS[9], ARGV[6])
  redis.call('HDEL', KEYS[10], ARGV[6])
  drop_hold(KEYS[5], KEYS[6], {ARGV[5], held_member(KEYS[7], ARGV[6], ARGV[5])})
  redis.call('HDEL', KEYS[7], ARGV[6])
  if not pending and late then return 0 end
end
-- A marker met is another charge of the request id. It is another admission's, which must not make this one free,
-- when this admission's pending charge is open (it was never charged: every charge drops it here), or when each of
-- its entries names an admission and none this one (a store that lost this admission let the id in again, and that
-- admission's charge landed first). Else it may be this admission's own charge (the reconciler's, or one of a version
-- before): a repeat. Kept beside the entries met, so none of those charges lands again either.
local function another_admissions(value)
  local entries = entries_of(value)
  if ARGV[9] == '' or #entries == 0 then return false end
  for _, entry in ipairs(entries) do
    local nonce = string.match(entry, '^1:[^:]*:(.+)$')
    if not nonce or nonce == ARGV[9] then return false end
  end
  return true
end
if met and not (own or another_admissions(met)) then return 0 end
-- The marker after this charge (model.py, marker_after_charge): the entries met and this one, with their total
-- while every charge is known: a duplicate's refusal says it (ADMIT).
if string.sub(marker, 1, 6) ~= 'batch:' then
  local before = met and string.match(met, ' 1::pico=(%d+)$') or (not met and '0')
  local entries = entries_of(met)
  entries[#entries + 1] = marker
  marker = table.concat(entries, ' ')
  if before then
    local b_hi, b_lo = split(before)
    marker = marker .. ' 1::pico=' .. decimal(add(b_hi, b_lo, split(ARGV[1])))
  end
  -- Released for a retry (model.py, RELEASED, marker_after_release): a charge of 0 that asks it, on an id charged 0
  -- in all whose every admission before was released. Any other charge rewrote the marker without it (above).
  if ARGV[14] == '1' and (not met or string.sub(met, -#RELEASED_TAIL) == RELEASED_TAIL)
      and string.sub(marker, -#ZERO_TAIL) == ZERO_TAIL then
    marker = string.sub(marker, 1, #marker - #ZERO_TAIL) .. RELEASED_TAIL
  end
else
  marker = marker .. ' 1::pico=' .. ARGV[1]  -- a collect of the line again tells it (model.py, CHARGED_TOTAL)
end
-- A provider batch line's charge, and any of the reconciler's, is counted in no router's metrics until one takes it
-- (COUNT_ONCE): its maker, once this reply arrives, by its charge id; else (this reply lost, or its maker dead before
-- its take) a later collect of the line, or the next reconciler, on any router, which finds each listed in its shard:
-- so neither a reconciler that dies before it hears back nor a collect that dies before its take loses a count. Beside
-- the marker, which has no room for the record (and a line's none for the id: routers of the version before read the
-- batch from 'batch:<id> 1::pico=<n>' as it stands).
if ARGV[8] ~= '' and (string.sub(marker, 1, 6) == 'batch:' or ARGV[10] ~= '') then
  redis.call('SET', KEYS[15], ARGV[8] .. ' ' .. ARGV[3], 'EX', ARGV[2])
  if listing then redis.call('ZADD', KEYS[16], redis.call('TIME')[1], ARGV[8] .. ' ' .. ARGV[6]) end
end
-- A marker met keeps its expiry when that is later: another admission's charge in it is kept to that admission's
-- marked_until. Set anew for this charge's alone, it expired before, and that charge, met again then (its reply lost
-- and replayed, its router frozen), was taken for one whose admission the store lost, and charged again.
redis.call('SET', KEYS[1], marker, 'EX', ARGV[2])
if met_until > 0 then redis.call('PEXPIREAT', KEYS[1], met_until, 'GT') end
-- The reconciler's: what it charged this admission, as long as the marker, for a charge or undo of it kept in an
-- outbox to give back once it lands (GIVE_BACK).
if ARGV[12] ~= '' then redis.call('SET', KEYS[14], ARGV[12], 'EX', ARGV[2]) end
-- The used id, naming the key that used it, lives at least as long as the charged marker (model.py, used_ttl_s): a
-- charge landing late (past its hold) would otherwise leave the charge on record with no key to tell it to.
redis.call('EXPIRE', KEYS[11], ARGV[2], 'GT')
-- Each kept at least until the admission's marked_until, whatever this router's request id TTL: a charge of it
-- arriving before then (its router frozen) finds the marker, and the reconciler's charge to give back.
if MARKED > 0 then
  for _, key in ipairs({KEYS[1], KEYS[11], KEYS[14]}) do redis.call('PEXPIREAT', key, ARGV[13], 'GT') end
end
for i = 2, 3 do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
redis.call('XADD', KEYS[4], '*', 'record', ARGV[3])
-- Counted once, as the charge lands (its repeats returned above), whether or not a tokens-per-minute limit is set: a
-- router that sets one reads what every router charged in the minute.
if tonumber(ARGV[11]) > 0 and tokens_counted(KEYS[13]) then
  redis.call('INCRBY', KEYS[13], ARGV[11])
  redis.call('EXPIRE', KEYS[13], RATE_TTL)
end
return 1
"""
)

EXTEND = (
    _MAY_GROW
    + _EXACT
    + _SPENT
    + _TOTALS
    + _HELD
    + _OUTLIVE
    + _PERMITTED
    + """
-- KEYS: tenant spend, tenant holds, key spend, key holds, limit overrides, pending charges, the spend and holds the
--       key budget is checked against (keys.py, key_budget), the shard's hold-totals epoch, the next period's tenant
--       spend and spend the key budget is checked against (_SPENT), what the key carried into the shard for the
--       period and the next (_SPENT), the shard's key-moves token (keys.py, key_moves_key)
-- ARGV: tenant default limit, key default limit ('' = none), old member, new member, new pico, expiry,
--       pending field, pending record, tenant limit field, key limit field, '1' to count the holds by their totals,
--       the key-moves token its key's binding was read under ('' = unchecked), as ADMIT's
EPOCH = redis.call('GET', KEYS[9]) or '0'
-- A request already settled has no hold to grow (its extension arrived late): refused, nothing made again. Nor has
-- one whose pending charge is another admission's of its request id (one a store that lost this admission let in).
local stored = redis.call('HGET', KEYS[6], ARGV[7])
if not stored then return 'settled' end
local nonce = string.match(ARGV[8], '"nonce":%s*"([^"]*)"')
if nonce and nonce ~= '' and string.match(stored, '"nonce":%s*"([^"]*)"') ~= nonce then return 'settled' end
-- A key moved since its binding was read (ADMIT's 'moved'): its move carried this hold into the new tenant's shard as
-- it stood once every shard had the move's token, so it grows no more here, checked against this shard's spend alone.
if ARGV[12] ~= '' and (redis.call('GET', KEYS[14]) or '0') ~= ARGV[12] then return 'moved' end
local old = held_member(KEYS[6], ARGV[7], ARGV[3])
-- Checked before any write (a total rebuilt below is one).
local writes = {{'ZREM', KEYS[2], old}, {'ZREM', KEYS[4], old}, {'ZADD', KEYS[2], ARGV[6], ARGV[4]},
  {'ZADD', KEYS[4], ARGV[6], ARGV[4]}, {'EXPIREAT', KEYS[2], '0'}, {'EXPIREAT', KEYS[4], '0'},
  {'HSET', KEYS[6], ARGV[7], ARGV[8]}}
for _, holds in ipairs({KEYS[2], KEYS[4]}) do
  for _, command in ipairs(total_commands(holds)) do writes[#writes + 1] = command end
end
local refused = denied(writes)
if refused then return refused end
-- A holds set of another type fails it here, before any write, as an admission (ADMIT): failing later, it dropped the
-- hold from the tenant's set and kept the pending charge open, its room in the tenant's budget given to others.
for _, holds in ipairs({KEYS[2], KEYS[4]}) do
  local found = redis.call('TYPE', holds)['ok']
  if found ~= 'none' and found ~= 'zset' then return redis.error_reply('WRONGTYPE a key the extension writes') end
end
local mistyped = totals_typed({KEYS[2], KEYS[4]})
if mistyped then return mistyped end
local budgets = {{KEYS[1], KEYS[2], ARGV[1], ARGV[9], 'tenant', KEYS[10]},
  {KEYS[7], KEYS[8], ARGV[2], ARGV[10], 'key', KEYS[11], KEYS[12], KEYS[13]}}
for _, b in ipairs(budgets) do
  local limit = redis.call('HGET', KEYS[5], b[4]) or b[3]
  if limit ~= '' then
    local u_hi, u_lo = spent(b[1], b[6], b[7], b[8])
    local n_hi, n_lo = split(ARGV[5])
    u_hi, u_lo = add(u_hi, u_lo, n_hi, n_lo)
    -- Every other member counts, of either form: the set's sum less the old hold, when it holds it.
    local h_hi, h_lo = held_sum(b[2], ARGV[11] == '1')
    if redis.call('ZSCORE', b[2], old) then h_hi, h_lo = sub(h_hi, h_lo, member_pico(old)) end
    u_hi, u_lo = add(u_hi, u_lo, h_hi, h_lo)
    local l_hi, l_lo = split(limit)
    if less(l_hi, l_lo, u_hi, u_lo) then return b[5] end
  end
end
drop_hold(KEYS[2], KEYS[4], {old})
for _, holds in ipairs({KEYS[2], KEYS[4]}) do
  hold_add(holds, ARGV[6], ARGV[4])
  outlive_holds(holds)
end
redis.call('HSET', KEYS[6], ARGV[7], ARGV[8])
return ''
"""
)

# A provider batch line's charge, or one of the reconciler's, counted in no router's metrics yet (CHARGE keeps it,
# keys.py, uncounted, and lists it in its shard, keys.py, uncounted_reconciled: its maker may die before it takes it),
# taken by the one router that counts it: by its charge's id, its maker once the charge's reply arrived, or the next
# reconciler's sweep of the list; by any id (''), a collect that found the line charged before (the reply to the
# charge's collect lost). Many takes of one shard a call (a collect's lines, a page of the list), all in its slot.
# Each take answers the charge's ledger record, what the metrics count; nothing when it is another charge's, or
# counted (taken) before, or none. A take naming the charge's entry in its shard's list drops it: taken now, or
# before, or its record gone with its marker, no take finds it there again.
# The taker names itself (its claim, one per call): the record taken is kept under that claim (keys.py, counted) a
# while, so the same call sent again after its reply was lost (a Redis Cluster client resends it; the store sends it
# again on one server) gets it again, and no other taker does; nor does a second take of the same charge in one call.
# Routers of the version before take one charge a call, by a script of their own (or one without a claim), which
# finds the uncounted charge gone once taken: counted once all the same.
# A take left alone (one of its own keys of another type) leaves its entry listed, moved behind every entry listed
# before (scored now, to the microsecond): the sweep reads the oldest first, a page a round, and a page of such
# entries would otherwise be all it ever read. Still a sorted set: a router of the version before refuses charges on
# a list key of another type.
# A call that took a charge now notes its claim in the shard's taken claims (keys.py, taken_claims_key), with when and
# the counted keys it took, until its taker acknowledges the reply (ACK_TAKE): one whose taker never heard it is
# adopted by the reconciler (ADOPT_CLAIM). One of another type there (hand-edited) is left alone, as the list is.
COUNT_ONCE = (
    _MUST_LAND
    + _PERMITTED
    + _LISTED
    + f"local TAKEN_KEPT_MS = {TAKEN_KEPT_S * 1000}\n"
    + """
-- KEYS: the shard's listed uncounted charges, the shard's taken claims; then two a take: the uncounted charge, its
--       count taken
-- ARGV: the taker's claim; then two a take: the charge's id ('' for any), its entry in that list ('' for none)
-- Returns two a take: the record taken (nil for none) and, for a take left alone, why (nil when it was not): one of its
-- own keys holds another type (hand-edited), which holds up none of the others.
local listed = LISTABLE[redis.call('TYPE', KEYS[1])['ok']]
local claims = CLAIMABLE[redis.call('TYPE', KEYS[2])['ok']]
local takes = (#KEYS - 2) / 2
local writes = {}
if listed then writes[1] = {'ZADD', KEYS[1], 'XX', '0', ''} end
if claims then writes[#writes + 1] = {'HSET', KEYS[2], ARGV[1], ''} end
for t = 0, takes - 1 do
  local k, a = 3 + 2 * t, 2 + 2 * t
  writes[#writes + 1] = {'SET', KEYS[k + 1], ''}
  writes[#writes + 1] = {'DEL', KEYS[k]}
  if listed then writes[#writes + 1] = {'ZREM', KEYS[1], ARGV[a + 1]} end
end
local refused = denied(writes)
if refused then return refused end
local function mistyped(keys)
  for _, key in ipairs(keys) do
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'none' and kind ~= 'string' then return 'a key of another type: ' .. key end
  end
  return false
end
local function take(uncounted, counted, id)
  local kept = redis.call('GET', uncounted)
  if not kept then
    local claim, record = string.match(redis.call('GET', counted) or '', '^(%S+) (.*)$')
    if claim ~= ARGV[1] then return false end
    return record  -- this very call, sent again
  end
  local named, record = string.match(kept, '^(%S+) (.*)$')
  if not named or (id ~= '' and named ~= id) then return false end
  local kept_ms = redis.call('PTTL', uncounted)  -- no longer than the uncounted charge would have lived
  if kept_ms < 0 or kept_ms > TAKEN_KEPT_MS then kept_ms = TAKEN_KEPT_MS end
  if kept_ms == 0 then kept_ms = 1 end  -- expiring this very millisecond: PX 0 is an error, after the writes above
  redis.call('SET', counted, ARGV[1] .. ' ' .. record, 'PX', kept_ms)
  redis.call('DEL', uncounted)
  return record
end
local function to_the_end(entry)
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[1], 'XX', now[1] .. '.' .. string.format('%06d', now[2]), entry)
end
local answers, seen, fresh = {}, {}, {}
for t = 0, takes - 1 do
  local k, a = 3 + 2 * t, 2 + 2 * t
  local why = mistyped({KEYS[k], KEYS[k + 1]})
  local record = false
  if why then
    if listed and ARGV[a + 1] ~= '' then to_the_end(ARGV[a + 1]) end
  else
    if listed and ARGV[a + 1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[a + 1]) end
    -- Answered once a call; a take that found another charge's (an entry an earlier charge of the request id left
    -- listed) leaves it to this call's take by its own id.
    if not seen[KEYS[k]] then
      local was = redis.call('EXISTS', KEYS[k])
      record = take(KEYS[k], KEYS[k + 1], ARGV[a])
      if record and was == 1 then fresh[#fresh + 1] = KEYS[k + 1] end  -- taken now, not this call sent again
    end
    if record then seen[KEYS[k]] = true end
  end
  answers[#answers + 1] = record
  answers[#answers + 1] = why
end
if claims and #fresh > 0 then
  local now = redis.call('TIME')
  local noted = redis.call('HGET', KEYS[2], ARGV[1])  -- a call sent again that took more: one note of them all
  if noted then
    for _, key in ipairs(cjson.decode(string.match(noted, '^%S+ (.*)$'))) do fresh[#fresh + 1] = key end
  end
  redis.call('HSET', KEYS[2], ARGV[1], now[1] * 1000 + math.floor(now[2] / 1000) .. ' ' .. cjson.encode(fresh))
end
return answers
"""
)

# A take's reply heard (COUNT_ONCE): its claim's note dropped from the shard's taken claims, and whether what it took is
# still its own, which it then counts: not when the reconciler adopted the claim (ADOPT_CLAIM) before this ran, which
# moved its counted keys to its own claim and counts them; a counted key gone (past TAKEN_KEPT_S, its taker frozen that
# long) tells no claim, and is the adopter's, counted by it, when the note was gone too. Sent again (its reply lost),
# it finds them as it left them.
ACK_TAKE = (
    _MUST_LAND
    + _PERMITTED
    + """
-- KEYS: the shard's taken claims; then the counted key of each charge the take answered
-- ARGV: the take's claim
-- Returns 1 when none of them was adopted, else 0.
local noted = false
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  local refused = denied({{'HDEL', KEYS[1], ARGV[1]}})
  if refused then return refused end
  noted = redis.call('HDEL', KEYS[1], ARGV[1]) == 1
end
for i = 2, #KEYS do
  local claim = nil
  if redis.call('TYPE', KEYS[i])['ok'] == 'string' then claim = string.match(redis.call('GET', KEYS[i]), '^(%S+) ') end
  if claim ~= ARGV[1] and (claim or not noted) then return 0 end
end
return 1
"""
)

# A take's claim its taker never acknowledged (ACK_TAKE) in time: the reconciler takes it over under a claim of its
# own, only while the note it read stands (neither acknowledged nor adopted since): each counted key still holding the
# old claim moves to the new one (its expiry kept), and the note with it, dated now. The adopter then sends the take
# again under its claim (COUNT_ONCE), which answers those records, and acknowledges it: counted once, by it.
ADOPT_CLAIM = (
    _MUST_LAND
    + _PERMITTED
    + """
-- KEYS: the shard's taken claims; then the counted keys the note names
-- ARGV: the old claim, the note as read, the new claim
-- Returns how many counted keys moved to the new claim, -1 when the note changed since read.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' or redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
local writes = {{'HDEL', KEYS[1], ARGV[1]}, {'HSET', KEYS[1], ARGV[3], ''}}
for i = 2, #KEYS do writes[#writes + 1] = {'SET', KEYS[i], ''} end
local refused = denied(writes)
if refused then return refused end
local moved = {}
for i = 2, #KEYS do
  if redis.call('TYPE', KEYS[i])['ok'] == 'string' then
    local claim, record = string.match(redis.call('GET', KEYS[i]), '^(%S+) (.*)$')
    if claim == ARGV[1] then
      redis.call('SET', KEYS[i], ARGV[3] .. ' ' .. record, 'KEEPTTL')
      moved[#moved + 1] = KEYS[i]
    end
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
if #moved > 0 then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[1], ARGV[3], now[1] * 1000 + math.floor(now[2] / 1000) .. ' ' .. cjson.encode(moved))
end
return #moved
"""
)

# An admission whose reply was lost, undone: only the one admission named by its nonce (the pending record's), so a
# late or replayed undo never touches a later admission of the same request id. The nonce is hex: no JSON escaping.
UNDO = (
    _MUST_LAND
    + _EXACT
    + _TOTALS
    + _HELD
    + _PERMITTED
    + """
-- KEYS: tenant holds, key holds, pending charges, used id, undone marker, provider batches, models, prices, the
--       shard's hold-totals epoch
-- ARGV: hold member, pending field, nonce, marker ttl
EPOCH = redis.call('GET', KEYS[9]) or '0'
local writes = {{'SET', KEYS[5], '1'}, {'ZREM', KEYS[1], ARGV[1]}, {'ZREM', KEYS[2], ARGV[1]},
  {'HDEL', KEYS[3], ARGV[2]}, {'HDEL', KEYS[6], ARGV[2]}, {'HDEL', KEYS[7], ARGV[2]}, {'HDEL', KEYS[8], ARGV[2]},
  {'DEL', KEYS[4]}}
for _, holds in ipairs({KEYS[1], KEYS[2]}) do
  for _, command in ipairs(total_commands(holds)) do writes[#writes + 1] = command end
end
local refused = denied(writes)
if refused then return refused end
local mistyped = totals_typed({KEYS[1], KEYS[2]})
if mistyped then return mistyped end
redis.call('SET', KEYS[5], '1', 'EX', ARGV[4])
local record = redis.call('HGET', KEYS[3], ARGV[2])
if not record or string.match(record, '"nonce":%s*"(%x*)"') ~= ARGV[3] then return 0 end
drop_hold(KEYS[1], KEYS[2], {held_member(KEYS[3], ARGV[2], ARGV[1])})
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[7], ARGV[2])
redis.call('HDEL', KEYS[8], ARGV[2])
redis.call('DEL', KEYS[4])
return 1
"""
)

# What the reconciler charged an admission at its hold, amended to what its router knew once that router's charge or
# undo, kept in its outbox, lands (the reconciler could not know of it): the difference given back to the tenant's and
# key's spend of the period charged, and a ledger entry of minus as much (model.py, given_back_record), once. The
# reconciled record is dropped as it is given back: a replay or resend, by this router or another sharing its outbox,
# finds it gone (or another admission's: the caller compares it whole, nonce included). Never more than either counter
# holds (a counter of a period long over has expired: nothing is given back then).
# An undo's give-back (nothing was served) leaves the request id as UNDO leaves it: this admission's entry dropped from
# the charged marker, and the id free once no other admission's charge is marked on it nor a pending charge of it open
# (one admitted after its markers expired is in flight: the id is its own). Else a retry of a request never served
# was refused as a duplicate charged 0 for a day. A charge's give-back (served) keeps the id used, its marker telling
# the amended total; a charge of 0 that asked the release (nothing delivered) leaves it released when that total is 0,
# as that charge landing first would have (CHARGE, RELEASED). Freeing it here returns no money a retry could then
# spend unpaid: the retry is a new admission, with its own hold and pending charge, which its charge or the reconciler
# settles.
GIVE_BACK = (
    _MUST_LAND
    + _EXACT
    + _PERMITTED
    + f"local RELEASED_TAIL = '{RELEASED_TAIL}'\nlocal ZERO_TAIL = ' {CHARGED_TOTAL}0'\n"
    + """
-- KEYS: reconciled, tenant spend, key spend (of the period it names), ledger, charged marker, used id, pending charges
-- ARGV: the reconciled record as the caller read it, pico to give back (at most what it names), ledger record,
--       '1' for an undo's give-back (else a charge's), the pending field, '1' for a charge's that asked to release the
--       request id (model.py, RELEASED; '' or none: not)
-- Returns 1 when given back now; 0 when the reconciled record is gone or another; -1 when a counter holds less.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i, kind in pairs({[4] = 'stream', [5] = 'string', [6] = 'string', [7] = 'hash'}) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= kind then return redis.error_reply('WRONGTYPE a key the give-back writes') end
end
local refused = denied({{'DEL', KEYS[1]}, {'DECRBY', KEYS[2], ARGV[2]}, {'DECRBY', KEYS[3], ARGV[2]},
  {'XADD', KEYS[4], '*', 'record', ARGV[3]}, {'SET', KEYS[5], ''}, {'DEL', KEYS[5]}, {'DEL', KEYS[6]}})
if refused then return refused end
local p_hi, p_lo = split(ARGV[2])
for i = 2, 3 do
  local spend = redis.call('GET', KEYS[i]) or ''
  if not string.match(spend, '^%d+$') then return -1 end
  local s_hi, s_lo = split(spend)
  if less(s_hi, s_lo, p_hi, p_lo) then return -1 end
end
-- What a duplicate's refusal says the id was charged in all (model.py, CHARGED_TOTAL), less as much.
local marker = redis.call('GET', KEYS[5])
local total = marker and string.match(marker, ' 1::pico=(%d+)$')
local told = nil
if total then
  local t_hi, t_lo = split(total)
  if not less(t_hi, t_lo, p_hi, p_lo) then told = decimal(sub(t_hi, t_lo, p_hi, p_lo)) end
end
if ARGV[4] == '1' then
  -- The entries of other admissions' charges (CHARGE: '1:<charge id>:<nonce>'; one naming no admission, of a version
  -- before, may be any's): those charges stand. A provider batch line's marker is its one admission's (CHARGE).
  local nonce = string.match(ARGV[1], '^(%S+) ')
  local others = {}
  if marker and string.sub(marker, 1, 6) ~= 'batch:' then
    for entry in string.gmatch(marker, '%S+') do
      if string.sub(entry, 1, 8) ~= '1::pico=' and string.match(entry, '^1:[^:]*:(.+)$') ~= nonce then
        others[#others + 1] = entry
      end
    end
  end
  if #others > 0 then
    if total and told then others[#others + 1] = '1::pico=' .. told end
    redis.call('SET', KEYS[5], table.concat(others, ' '), 'KEEPTTL')
  else
    redis.call('DEL', KEYS[5])
    if redis.call('HEXISTS', KEYS[7], ARGV[5]) == 0 then redis.call('DEL', KEYS[6]) end
  end
elseif told then
  local amended = string.sub(marker, 1, #marker - #total) .. told
  -- A charge of 0 that asked to release the id (a request that delivered nothing): released as that charge, landing
  -- before the reconciler's, would have released it (CHARGE), when the id is now charged 0 in all. Its marker is kept:
  -- the reconciler's charge, and this one, replayed, are still known as made.
  if ARGV[6] == '1' and string.sub(amended, 1, 6) ~= 'batch:' and string.sub(amended, -#ZERO_TAIL) == ZERO_TAIL then
    amended = string.sub(amended, 1, #amended - #ZERO_TAIL) .. RELEASED_TAIL
  end
  redis.call('SET', KEYS[5], amended, 'KEEPTTL')
end
redis.call('DEL', KEYS[1])
redis.call('DECRBY', KEYS[2], ARGV[2])
redis.call('DECRBY', KEYS[3], ARGV[2])
redis.call('XADD', KEYS[4], '*', 'record', ARGV[3])
return 1
"""
)

# The charges of the SQL ledger a money Redis restored from a backup forgot (services/router/ledger_charges.py), made
# known to it again, each request atomically: its markers set as its charge set them (CHARGE), and its pending charge
# and hold dropped as CHARGE drops them (hold_remove: the totals move by what is removed), with no spend and no ledger
# entry (the charge is counted already). Many requests of one shard a call, all in its slot. Checked before any
# write: the ACL (_PERMITTED) and the shard's hashes' types; a request whose own keys hold other types is left alone,
# told, as is a pending charge read by its caller with another key than it has now (admitted since: read it again).
LEDGER_CHARGED = (
    _MUST_LAND
    + _EXACT
    + _TOTALS
    + _HELD
    + _PERMITTED
    + f"local UNRECORDED_BATCH = '{UNRECORDED_BATCH}'\nlocal RELEASED_TAIL = '{RELEASED_TAIL}'\n"
    + """
-- KEYS: the shard's pending charges, provider batches, models, prices, hold-totals epoch; then four a request: its
--       used id, charged marker, tenant holds, key holds (of the key its pending charge was read with)
-- ARGV: '1' to repair, else only to tell; then seven a request: its pending field, its hold member (at any pico: its
--       pending charge's is dropped), the key its pending charge was read with ('' for none), the used id's value
--       (the key id of its last charge, hex), when its markers expire (Unix ms), its charged marker, how many charges
--       of it the SQL ledger holds
-- Returns a triple a request: '1' when its charged marker is missing (its markers set), the hold (pico-USD) of the
-- pending charge dropped ('' for none), and why it was left alone ('' when it was not).
EPOCH = redis.call('GET', KEYS[5]) or '0'
local repair, requests = ARGV[1] == '1', (#KEYS - 5) / 4
for i = 1, 4 do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= 'hash' then return redis.error_reply('WRONGTYPE a key the repair writes') end
end
if repair then
  local writes = {{'HDEL', KEYS[1], ''}, {'HDEL', KEYS[2], ''}, {'HDEL', KEYS[3], ''}, {'HDEL', KEYS[4], ''}}
  for r = 0, requests - 1 do
    local k = 5 + 4 * r
    for _, write in ipairs({{'SET', KEYS[k + 1], ''}, {'PEXPIREAT', KEYS[k + 1], '0'}, {'SET', KEYS[k + 2], ''}}) do
      writes[#writes + 1] = write
    end
    for _, holds in ipairs({KEYS[k + 3], KEYS[k + 4]}) do
      writes[#writes + 1] = {'ZREM', holds, ''}
      for _, command in ipairs(total_commands(holds)) do writes[#writes + 1] = command end
    end
  end
  local refused = denied(writes)
  if refused then return refused end
end
local function read_with(record, key)
  local decoded, pending = pcall(cjson.decode, record)
  if not decoded or type(pending) ~= 'table' then return 'its pending charge is unreadable' end
  local named = pending['key']
  if type(named) ~= 'string' then named = '' end
  if named ~= key then return 'its pending charge changed since it was read: run again' end
  return ''
end
-- Whether a charged marker names only admissions other than the pending charge's (CHARGE, another_admissions): that
-- pending charge is then no charge come back but another admission in flight (a store that lost the one charged let
-- its id in again), which its own charge, or the reconciler at its hold, still charges: it keeps its hold.
local function in_flight(value, record)
  local nonce = string.match(record, '"nonce":%s*"([^"]*)"')
  if not value or not nonce or nonce == '' or string.sub(value, 1, 6) == 'batch:' then return false end
  local named = 0
  for entry in string.gmatch(value, '%S+') do
    if string.sub(entry, 1, 8) ~= '1::pico=' then
      local admission = string.match(entry, '^1:[^:]*:(.+)$')
      if not admission or admission == nonce then return false end
      named = named + 1
    end
  end
  return named > 0
end
-- Whether a charged marker is one released for a retry (model.py, RELEASED) that names fewer charges than the SQL
-- ledger holds of its id: a charge since (its retry's, served) that the restore forgot, whose id is used again.
local function released_before(value, ledger_charges)
  if not value or string.sub(value, -#RELEASED_TAIL) ~= RELEASED_TAIL then return false end
  local named = 0
  for entry in string.gmatch(value, '%S+') do
    if string.sub(entry, 1, 8) ~= '1::pico=' then named = named + 1 end
  end
  return named < (tonumber(ledger_charges) or 0)
end
local told = {}
for r = 0, requests - 1 do
  local k, a = 5 + 4 * r, 1 + 7 * r
  local used, charged, holds = KEYS[k + 1], KEYS[k + 2], {KEYS[k + 3], KEYS[k + 4]}
  local field, member, key, user, at = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local marker = ARGV[a + 6]
  local result = {'0', '', ''}
  for _, each in ipairs({{used, 'string'}, {charged, 'string'}, {holds[1], 'zset'}, {holds[2], 'zset'}}) do
    local found = redis.call('TYPE', each[1])['ok']
    if found ~= 'none' and found ~= each[2] then result[3] = 'a key of another type: ' .. each[1] end
  end
  if result[3] == '' and totals_typed(holds) then result[3] = 'a holds total of another type' end
  if result[3] == '' then
    local record = redis.call('HGET', KEYS[1], field)
    local kept = redis.call('GET', charged)
    -- Released before a charge the restore forgot: as forgotten, its retry's pending charge come back no other
    -- admission in flight (the released marker names the first's alone).
    local forgotten = not kept or released_before(kept, ARGV[a + 7])
    if record then
      result[3] = read_with(record, key)
      if result[3] ~= '' or (kept and not forgotten and in_flight(kept, record)) then record = nil end
    end
    if forgotten then result[1] = '1' end
    if record then result[2] = string.match(record, '"hold_pico":%s*(%d+)') or '0' end
    if repair and forgotten then
      -- A line's marker names its batch, or UNRECORDED_BATCH for one with none recorded, as CHARGE marks it.
      local batch = record and redis.call('HGET', KEYS[2], field)
      if batch then
        local named = batch ~= '' and batch or UNRECORDED_BATCH
        marker = 'batch:' .. named .. (string.match(marker, ' 1::pico=%d+$') or '')
      end
      local kept_until = kept and redis.call('PEXPIRETIME', charged) or -1
      redis.call('SET', charged, marker, 'PXAT', at)
      if kept_until > 0 then redis.call('PEXPIREAT', charged, kept_until, 'GT') end
      if redis.call('EXISTS', used) == 1 then
        redis.call('PEXPIREAT', used, at, 'GT')
      else
        redis.call('SET', used, user, 'PXAT', at)
      end
    end
    if repair and record then
      redis.call('HDEL', KEYS[2], field)
      redis.call('HDEL', KEYS[3], field)
      redis.call('HDEL', KEYS[4], field)
      drop_hold(holds[1], holds[2], {held_member(KEYS[1], field, member)})
      redis.call('HDEL', KEYS[1], field)
    end
  end
  told[#told + 1] = result
end
return told
"""
)

# A provider batch line as a collect tells it (deferred.py, kept_line: the batch it was read from, a newline, the line),
# kept unless a line of the same batch is kept already: the first collect's to keep it stays (a second's, its charge
# refused as charged before, keeps nothing over it), unless replaced by the collect whose charge landed (its own line
# kept after another's: deferred.py, _keep_over). One kept for another batch (the tenant's request id used again
# while its earlier line's answer is kept) is replaced: no collect of this batch tells it.
KEEP_ANSWER = """
-- KEYS: the request id's kept line; ARGV: the line, the batch it was read from and a newline, its TTL in ms, '1' to
-- replace a line of the same batch
local kept = redis.call('GET', KEYS[1])
if kept and ARGV[4] ~= '1' and string.sub(kept, 1, #ARGV[2]) == ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

# A deferred request's provider batch, recorded beside its pending charge (keys.py, batches_key) only while that
# charge is still the admission's (its nonce): a charge, release or undo before it leaves nothing to record on. The
# record is only read (cjson would not re-encode hold_pico exactly). It must land even when the store is full
# (allow-oom): the provider batch exists, and its results are what settle the line.
RECORD_BATCH = (
    _MUST_LAND
    + """
-- KEYS: pending charges, provider batches; ARGV: pending field, nonce, provider batch id
local pending = redis.call('HGET', KEYS[1], ARGV[1])
if not pending then return 0 end
local decoded, record = pcall(cjson.decode, pending)
if not decoded or type(record) ~= 'table' or (record['nonce'] or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""
)

# A pending charge and the provider batch, model and prices recorded for it, read at one instant: a charge in between
# two reads would show a recorded line as one with none.
PENDING_CHARGE = """#!lua flags=no-writes
-- KEYS: pending charges, provider batches, models, prices; ARGV: pending field
local field = ARGV[1]
local record, batch = redis.call('HGET', KEYS[1], field), redis.call('HGET', KEYS[2], field)
return {record, batch, redis.call('HGET', KEYS[3], field), redis.call('HGET', KEYS[4], field)}
"""

# The holds admission counts, of each holds set given (all in the shard of the pending charges given): those not
# expired, and those of open pending charges (_OPEN). Members, not a sum: Lua numbers are not exact past 2^53.
HELD = (
    "#!lua flags=no-writes\n"
    + _OPEN
    + """
-- KEYS: pending charges, holds sets...; ARGV: now
local counted = {}
for i = 2, #KEYS do
  local members = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. ARGV[1], '+inf')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])) do
    if open_hold(member, KEYS[1]) then members[#members + 1] = member end
  end
  counted[#counted + 1] = members
end
return counted
"""
)

# One holds set's running total beside what a scan of the set sums, read at one instant (money_check.py).
HOLD_TOTAL = (
    "#!lua flags=no-writes\n"
    + _EXACT
    + _TOTALS
    + """
-- KEYS: a holds set, the shard's hold-totals epoch
-- Returns its total's pico, count and epoch ('' for none), the shard's epoch, and the scan's pico and count.
local total = redis.call('HMGET', total_of(KEYS[1]), 'pico', 'count', 'epoch')
local hi, lo, n = scanned(KEYS[1])
return {total[1] or '', total[2] or '', total[3] or '', redis.call('GET', KEYS[2]) or '0', decimal(hi, lo), n}
"""
)

# The reconciler's lease, taken (or renewed) by one router at a time (KEYS: the lease, its last holder; ARGV: the
# router, the lease's ms, the ms its key outlives it by, now by the money's clock in Unix ms). Returns 0 when another
# holds it; 1 when `router` does, and none other held it since it last did; 2 when `router` took it from another, or
# its last holder is not known. Its key reads "<router> +<outlives ms> <until, Unix ms>" and outlives the lease: a
# router of a version before (whose script sets it to its bare name, for the lease alone, and writes no last holder)
# takes it only once the key is gone, so it can hold the lease only after a gap with no round of this version for as
# long as the key outlives the lease, and a key found gone is taken as another's tenure may have passed through it.
# Whether it is held is Redis' own clock's call, by the key's PTTL against what it outlives the lease by (as its
# holder set it: routers may run other leases), never a router's: one whose money clock is ahead (its TIME unread, or
# just after a failover) took a live lease. `until`, last, is for the version just before, which compares it with its
# own money clock; a key that version wrote ("<router> <until>") is judged that way still; a bare name is the version
# before's, held until its key lapses. The key is read from its writer's name on: the last holder, which every
# version since the bare name's writes in the same script. Parsed from its end, a name ending in " +<digits>" (or
# " <digits>": names may hold anything, ROUTER_INSTANCE_ID) was misread: the version just before's "x +5 <until>" taken
# for router "x"'s (x then took a live lease as its own, and any other router waited for the key's PTTL, not `until`),
# a bare "old 7" for a lease past at 7 ms. A key that does not begin with the last holder's name and a blank is read as
# a bare name (the version before's, which keeps no last holder, or one whose last holder is gone): held until it
# lapses, its whole PTTL at most. TIME is not called: it may be renamed away or denied.
LEASE = """
local held = redis.call('GET', KEYS[1])
local last = redis.call('GET', KEYS[2])
local now = tonumber(ARGV[4])
if held then
  local holder, lapsed = held, false
  if last and string.sub(held, 1, #last + 1) == last .. ' ' then
    local after = string.sub(held, #last + 2)
    local outlives = string.match(after, '^%+(%d+) %d+$')
    if outlives then
      holder, lapsed = last, redis.call('PTTL', KEYS[1]) <= tonumber(outlives)
    elseif string.match(after, '^%d+$') then
      holder, lapsed = last, tonumber(after) <= now
    end
  end
  if holder ~= ARGV[1] and not lapsed then return 0 end
end
local value = ARGV[1] .. ' +' .. ARGV[3] .. ' ' .. (now + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], value, 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('SET', KEYS[2], ARGV[1])
if held and last == ARGV[1] then return 1 end
return 2
"""

# A router's heartbeat (KEYS[1]) and its last beat (KEYS[2]; keys.py, last_beat_key), both of the GLOBAL slot, set at
# one instant by this store's clock (ARGV: the heartbeat's value, its TTL in ms, how long the last beat outlives it in
# ms). The last beat holds when the heartbeat lapses, Unix ms, its very expiry (PXAT): the reconciler judges how long a
# router has been gone by the store's clock against it (last_beats.py). Returns that time. TIME renamed away or denied
# (clock.py), the heartbeat is set alone, as a version before set it, its last beat dropped: judged by sightings.
BEAT = """
local timed, clock = pcall(redis.call, 'TIME')
if not timed then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  return false
end
local lapses = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + tonumber(ARGV[2])
local at = string.format('%d', lapses)  -- never a number's shortest form ('1.7e+12')
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', at)
redis.call('SET', KEYS[2], at, 'PXAT', string.format('%d', lapses + tonumber(ARGV[3])))
return at
"""

# A router's ROUTER_PENDING_STALE_S published (pending_stale.py). KEYS[1]: PENDING_STALE; ARGV: now and until (Unix ms
# by the money's clock), the value. A value's score only grows (another router with it may beat later); those past are
# dropped, and the key lapses with the last. One of another type (hand-edited) is replaced: no heartbeat fails on it.
PUBLISH_PENDING_STALE = """
local read, kept = pcall(redis.call, 'ZSCORE', KEYS[1], ARGV[3])
if not read then
  redis.call('DEL', KEYS[1])
  kept = false
end
if not kept or tonumber(kept) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
"""

# Routers' heartbeats as the reconciler reads them (last_beats.py), at one instant of this store's clock. KEYS: each
# router's heartbeat, then each one's last beat, in the same order, all of the GLOBAL slot; ARGV[1]: what a heartbeat
# of a router that writes its last beat says. Returns {now, Unix ms; each router's heartbeat found (1) or not (0); each
# missing one's last beat (false: none, or unreadable)}. A heartbeat found without ARGV[1] was written by a router of a
# version before under the name of one of this version (ROUTER_INSTANCE_ID kept across a rollback): its last beat
# tells nothing of that router's beats, so it is deleted, and the router judged by sightings alone. TIME renamed away
# or denied (clock.py), `now` is false and no last beat is read.
BEATS_READ = """
local timed, clock = pcall(redis.call, 'TIME')
local now = timed and tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local routers = #KEYS / 2
local found, lapsed = {}, {}
for i = 1, routers do
  local read, beat = pcall(redis.call, 'GET', KEYS[i])
  if not read then  -- a key of another type (hand-edited): there, as EXISTS says
    found[i], lapsed[i] = 1, false
  elseif beat then
    if not string.find(beat, ARGV[1], 1, true) then redis.call('DEL', KEYS[routers + i]) end
    found[i], lapsed[i] = 1, false
  else
    local last_read, last = pcall(redis.call, 'GET', KEYS[routers + i])
    found[i], lapsed[i] = 0, timed and last_read and last
  end
end
return {now, found, lapsed}
"""

# On a Redis Cluster node: its own line of CLUSTER NODES (heartbeats.py: is it the slot's stable owner?) and every
# heartbeat it holds in the GLOBAL slot, read at that same instant. A node that does not own the slot refuses reads of
# the keys it holds there (an importing node's, without ASKING): those are false, and the caller discards them all.
SLOT_HEARTBEATS = """#!lua flags=no-writes
-- ARGV: the GLOBAL slot, the heartbeats' prefix
local me = redis.call('CLUSTER', 'MYID') .. ' '
local mine = ''
for line in string.gmatch(redis.call('CLUSTER', 'NODES'), '[^\\n]+') do
  if string.sub(line, 1, #me) == me then mine = line end
end
local slot = tonumber(ARGV[1])
local beats = {}
for _, name in ipairs(redis.call('CLUSTER', 'GETKEYSINSLOT', slot, redis.call('CLUSTER', 'COUNTKEYSINSLOT', slot))) do
  if string.sub(name, 1, #ARGV[2]) == ARGV[2] then
    local read, beat = pcall(redis.call, 'GET', name)
    beats[#beats + 1] = read and beat
  end
end
return {mine, beats}
"""


# Where the SQL sink's group ARGV[1] stands on ledger stream KEYS[1], for money_check's ledger-spend: the XRANGE start
# of every entry it has not acknowledged (its oldest pending entry, else after its last-delivered id; the whole stream
# without a group). An entry before it was committed to the SQL ledger before now (the sink acknowledges after its
# commit). Read-only.
LEDGER_UNACKED_FROM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '-' end
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == ARGV[1] then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
    if pending[1] > 0 then return pending[2] end
    return '(' .. fields['last-delivered-id']
  end
end
return '-'
"""

# Of ledger stream KEYS[1] at one instant, for money_check's ledger-spend: {entries ever added, entries held, its first
# entry's id ('' when it holds none), its last id given}; {0, 0, '', '0-0'} before its first entry. Read-only.
_STREAM_POSITION = """
local function stream_position(key)
  if redis.call('EXISTS', key) == 0 then return {0, 0, '', '0-0'} end
  local found = {}
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do found[info[i]] = info[i + 1] end
  local first = found['first-entry']
  return {found['entries-added'], found['length'], first and first[1] or '', found['last-generated-id']}
end
"""
LEDGER_POSITION = _STREAM_POSITION + "return stream_position(KEYS[1])"

# Spend counter KEYS[1] raised by ARGV[2] pico-USD and kept ARGV[3] s (0: for good), for money_check's ledger-spend
# --repair, only while its repairs count KEYS[2] (keys.py, repairs_key) holds ARGV[1] (what the check read with the
# counter, '0' for none), which the raise counts one more. So another repair since (which read the same loss) makes it
# raise nothing, while a charge or a give-back landing since does not: those are money of their own, not in what the
# check read, and the loss it found is still missing beside them. Nor does it raise a counter that moved from ARGV[4]
# (as the check read it) while its shard's ledger stream KEYS[3] was added nothing since (its last id still ARGV[5]):
# no charge or give-back moved it, but a repair of the version before, which counts no repair (or a hand edit).
# Returns 1 when raised, 0 when another repair raised it since, -1 when it moved with no ledger entry beside it.
RAISE_SPEND = (
    _STREAM_POSITION
    + """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[4] and stream_position(KEYS[3])[4] == ARGV[5] then return -1 end
redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
if ARGV[3] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 1
"""
)

# The give-backs (model.py, given_back_record, always written compact) among at most ARGV[2] entries of a shard's
# ledger stream KEYS[1] from XRANGE start ARGV[1], for money_check's ledger-spend: {{}, {entry id, record, ...}, where
# the next page starts} while a page is full, and at the stream's end {counters, {...}, '', the stream's position,
# repairs}: spend counters KEYS[2..n+1] read in the same script as the last page, so no give-back lowers a counter
# between the two, the stream's position (_STREAM_POSITION) as they were read, and each counter's repairs count
# KEYS[n+2..] (keys.py, repairs_key: what RAISE_SPEND checks) at the same instant. One call reads one page: a long
# backlog (a sink stopped for hours, a stream without its group) blocks the master for a page at a time, never for the
# whole of it.
# Read-only.
SPEND_AND_GIVEN_BACK = (
    _STREAM_POSITION
    + """
local page = tonumber(ARGV[2])
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', page)
local given = {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'record' and string.find(fields[i + 1], '"outcome":"given_back"', 1, true) then
      given[#given + 1] = entry[1]
      given[#given + 1] = fields[i + 1]
    end
  end
end
if #entries == page then return {{}, given, '(' .. entries[#entries][1]} end
local counters = (#KEYS - 1) / 2
local counted, repairs = {}, {}
for i = 2, counters + 1 do
  counted[#counted + 1] = redis.call('GET', KEYS[i]) or '0'
  repairs[#repairs + 1] = redis.call('GET', KEYS[i + counters]) or '0'
end
return {counted, given, '', stream_position(KEYS[1]), repairs}
"""
)

# An operator's limit change, recorded before any shard takes it (limits.py): its version, above the counter's last and
# at least the money's clock in microseconds (a counter a failover lost, or deleted by hand, starts again no lower than
# the versions the shards already hold), and the field's latest change, in the record and among the unconfirmed until
# every shard has it. Answers the version and the limit of the change before ('' the default; none for a field never
# recorded), read in the same step.
# KEYS: version counter, changes, unconfirmed. ARGV: limit field, pico-USD ('' = back to the default), now in us.
RECORD_LIMIT = """
local version = string.format('%.0f', math.max((tonumber(redis.call('GET', KEYS[1])) or 0) + 1, tonumber(ARGV[3])))
redis.call('SET', KEYS[1], version)
local before = redis.call('HGET', KEYS[2], ARGV[1])
local change = version .. ':' .. ARGV[2]
redis.call('HSET', KEYS[2], ARGV[1], change)
redis.call('HSET', KEYS[3], ARGV[1], change)
if not before then return {version} end
return {version, string.sub(before, string.find(before, ':', 1, true) + 1)}
"""

# A recorded limit change taken by shards' limits hashes (one, or on one server every shard a key's goes to: no
# cross-slot check there), each only if it has taken no later one (its versions hash): changes applied in any order,
# or again, leave every shard with the latest. Answers the first shard's limit before (nil: none); where this change (an
# upkeep finishing it while it was under way) or a later one got there first, the limit it held before any recorded
# change (kept, beside the versions, by the first change to reach it): the caller asks only for a field the record had
# no change of, and neither its own limit nor a later's was before it.
# KEYS: limits, limit versions, for each shard. ARGV: limit field, pico-USD ('' = removed), the change's version.
SWAP_LIMIT = """
local before = redis.call('HGET', KEYS[1], ARGV[1])
local version = tonumber(ARGV[3])
local unrecorded = 'unrecorded:' .. ARGV[1]
local taken = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if not taken then
  redis.call('HSET', KEYS[2], unrecorded, before or '')
elseif taken >= version then
  before = redis.call('HGET', KEYS[2], unrecorded)
  if before == '' then before = false end
end
for i = 1, #KEYS, 2 do
  if (tonumber(redis.call('HGET', KEYS[i + 1], ARGV[1])) or 0) < version then
    if ARGV[2] == '' then
      redis.call('HDEL', KEYS[i], ARGV[1])
    else
      redis.call('HSET', KEYS[i], ARGV[1], ARGV[2])
    end
    redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[3])
  end
end
return before
"""

# A limit change every shard has taken: no longer unconfirmed, unless a later change of the field is (its own record).
# KEYS: unconfirmed. ARGV: limit field, the change as recorded.
CONFIRM_LIMIT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
