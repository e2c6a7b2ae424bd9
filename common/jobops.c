/* jobops.c — the job commands of protocol v1 (see jobops.h). */
#include "common/jobops.h"

#include "common/affinity.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The end of a job, in the scripts that end one (cancel_lua, finish_lua):
 * the job leaves its tenant's set of unfinished jobs (<P>tenant:{<t>}:jobs,
 * the per-key limit), and its Idempotency-Key record (hash field `idem`)
 * gets the job's own TTL, so the key never outlives the job it names; the
 * job's tokens (prompt + completion) count towards its tenant's tokens of
 * the minute it ended in (<P>tenant:{<t>}:tokens:<Unix minute>, kept 3 min:
 * the per-key tokens-per-minute budget; minutes of Redis's clock, TIME, so
 * that gateways' and workers' clocks never disagree).  The prefix is read off the job
 * hash's name '<P>job:{<id>}' (no argument to add).  Lua: end_job(job hash,
 * id, ttl s, tokens), END_JOB_LUA, which both scripts begin with
 * (tests/gateway/test_jobops_scripts.py reads the scripts, macro included,
 * from this file). */

#define END_JOB_LUA \
    "local function end_job(job, id, ttl, tokens)\n" \
    "  local own = redis.call('HMGET', job, 'tenant', 'idem')\n" \
    "  if own[1] then\n" \
    "    local t = string.sub(job, 1, #job - #id - 6) .. 'tenant:{' .. own[1] .. '}:'\n" \
    "    redis.call('SREM', t .. 'jobs', id)\n" \
    "    if tokens > 0 then\n" \
    "      local used = t .. 'tokens:' .. string.format('%d', math.floor(redis.call('TIME')[1] / 60))\n" \
    "      redis.call('INCRBY', used, tokens)\n" \
    "      redis.call('EXPIRE', used, 180)\n" \
    "    end\n" \
    "  end\n" \
    "  if own[2] and tonumber(ttl) > 0 and redis.call('HGET', own[2], 'id') == id then\n" \
    "    redis.call('EXPIRE', own[2], ttl)\n" \
    "  end\n" \
    "end\n"

/* KEYS[1] job hash, KEYS[2] output stream; ARGV[1] output channel, ARGV[2]
 * cancel channel, ARGV[3] id, ARGV[4] now ms, ARGV[5] ttl s, ARGV[6] chunk,
 * ARGV[7] (optional) the canceller's tenant: a job another tenant owns is
 * "no such job" (0). */
static const char cancel_lua[] =
    END_JOB_LUA
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return 0 end\n"
    "if ARGV[7] and ARGV[7] ~= '' then\n"
    "  local owner = redis.call('HGET', KEYS[1], 'tenant')\n"
    "  if owner and owner ~= ARGV[7] then return 0 end\n"
    "end\n"
    "if st == 'queued' then\n"
    "  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finish_reason', 'cancelled', 'cancel', '1',\n"
    "             'finished', ARGV[4], 'prompt_tokens', '0', 'completion_tokens', '0')\n"
    "  redis.call('XADD', KEYS[2], '*', 'c', ARGV[6])\n"
    "  redis.call('PUBLISH', ARGV[1], ARGV[6])\n"
    "  redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
    "  end_job(KEYS[1], ARGV[3], ARGV[5], 0)\n"
    "  if tonumber(ARGV[5]) > 0 then\n"
    "    redis.call('EXPIRE', KEYS[1], ARGV[5])\n"
    "    redis.call('EXPIRE', KEYS[2], ARGV[5])\n"
    "  end\n"
    "  return 2\n"
    "end\n"
    "if st == 'running' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel', '1')\n"
    "  redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
    "  return 1\n"
    "end\n"
    "return 3\n";

/* KEYS[1] job hash, KEYS[2] output stream; ARGV[1] model, ARGV[2] worker,
 * ARGV[3] now ms, ARGV[4] seed.  Returns {code, attempts, seed, chunk...}:
 * the chunks (field c of each output stream entry, in order) only for
 * codes 1 and 2, which resume from them; code 3 (poison) with the reason
 * instead.  The poison checks come before any write: a command that fails
 * half-way through a script keeps the writes before it, so a WRONGTYPE
 * after the HINCRBY would count an attempt per delivery and never end. */
static const char admit_lua[] =
    "local th, to = redis.call('TYPE', KEYS[1]).ok, redis.call('TYPE', KEYS[2]).ok\n"
    "if th ~= 'hash' and th ~= 'none' then return {3, 0, '', 'its job hash is a ' .. th .. ', not a hash'} end\n"
    "if to ~= 'stream' and to ~= 'none' then return {3, 0, '', 'its output stream is a ' .. to .. ', not a stream'} end\n"
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st == 'done' or st == 'failed' or st == 'cancelled' or st == 'expired' then return {0, 0, ''} end\n"
    "local a = redis.call('HGET', KEYS[1], 'attempts')\n"
    "if a and not (string.match(a, '^%d+$') and #a < 19) then\n"
    "  return {3, 0, '', 'its job hash holds attempts that are not a count'}\n"
    "end\n"
    "if not st then redis.call('HSET', KEYS[1], 'model', ARGV[1], 'created', ARGV[3]) end\n"
    "local att = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2])\n"
    "redis.call('HSETNX', KEYS[1], 'started', ARGV[3])\n"
    "redis.call('HSETNX', KEYS[1], 'seed', ARGV[4])\n"
    "local seed = redis.call('HGET', KEYS[1], 'seed')\n"
    "local r = {1, att, seed}\n"
    "if redis.call('HGET', KEYS[1], 'cancel') == '1' then r[1] = 2 end\n"
    "for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do\n"
    "  local f = e[2]\n"
    "  for i = 1, #f - 1, 2 do\n"
    "    if f[i] == 'c' then r[#r + 1] = f[i + 1] break end\n"
    "  end\n"
    "end\n"
    "return r\n";

/* The scripts below name the lanes' streams KEYS[3..5] (submit_lua) or
 * KEYS[1..3] (the others): written for three lanes. */
_Static_assert(KEYS_LANES == 3, "the lane scripts name three lane streams");

/* Submission, bounded and/or idempotent: KEYS[1] job hash, KEYS[2] the
 * request's lane stream, KEYS[3..5] every lane's stream (the bound counts
 * them all), KEYS[6] (optional) idempotency hash; ARGV[1] model, ARGV[2]
 * created ms, ARGV[3] id, ARGV[4] request, ARGV[5] max queue (0: none),
 * ARGV[6] group, and with KEYS[6]: ARGV[7] body hash, ARGV[8] ttl s;
 * optional ARGV[9] tenant ('' = none), ARGV[10] its limit of unfinished
 * jobs and ARGV[11] its tokens per minute (0 = none), optional ARGV[12]
 * the entry's affinity keys (field `a`, '' = none).  A tenant at its
 * limit has its set pruned of ended jobs at most every 10 s (the marker
 * <P>tenant:{<t>}:jobs:pruned): a key hammering at its limit must not make
 * every refusal cost Redis a walk over its jobs.  lane_waiting: the lag of group g on a lane, or XLEN
 * when Redis has none.  The job keys of other ids (an idempotency record's
 * job, a tenant's jobs) are named from the prefix of KEYS[1]. */
static const char submit_lua[] =
    "local function lane_waiting(key, g)\n"
    "  local groups = redis.pcall('XINFO', 'GROUPS', key)\n"
    "  if type(groups) == 'table' and not groups.err then\n"
    "    for _, x in ipairs(groups) do\n"
    "      local name, lag\n"
    "      for i = 1, #x - 1, 2 do\n"
    "        if x[i] == 'name' then name = x[i + 1] elseif x[i] == 'lag' then lag = x[i + 1] end\n"
    "      end\n"
    "      if name == g and type(lag) == 'number' then return lag end\n"
    "    end\n"
    "  end\n"
    "  return redis.call('XLEN', key)\n"
    "end\n"
    "local pfx = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[3] - 6)\n"
    "local function job_state(id)\n"
    "  local st = redis.pcall('HGET', pfx .. 'job:{' .. id .. '}', 'state')\n"
    "  if type(st) == 'table' then return nil end\n"
    "  return st\n"
    "end\n"
    "if KEYS[6] then\n"
    "  local prev = redis.call('HMGET', KEYS[6], 'id', 'body')\n"
    "  if prev[1] and job_state(prev[1]) then\n"
    "    if prev[2] ~= ARGV[7] then return {3, prev[1]} end\n"
    "    return {2, prev[1]}\n"
    "  end\n"
    "end\n"
    "local waiting = 0\n"
    "if tonumber(ARGV[5]) > 0 then\n"
    "  for l = 3, 5 do waiting = waiting + lane_waiting(KEYS[l], ARGV[6]) end\n"
    "  if waiting >= tonumber(ARGV[5]) then return {0, waiting} end\n"
    "end\n"
    "local tenant = ARGV[9] or ''\n"
    "local tset = pfx .. 'tenant:{' .. tenant .. '}:jobs'\n"
    "local lim = tonumber(ARGV[10] or '0')\n"
    "if tenant ~= '' and lim > 0 and redis.call('SCARD', tset) >= lim then\n"
    "  if redis.call('SET', tset .. ':pruned', '1', 'NX', 'EX', '10') then\n"
    "    for _, j in ipairs(redis.call('SMEMBERS', tset)) do\n"
    "      local st = job_state(j)\n"
    "      if st ~= 'queued' and st ~= 'running' then redis.call('SREM', tset, j) end\n"
    "    end\n"
    "  end\n"
    "  local n = redis.call('SCARD', tset)\n"
    "  if n >= lim then return {4, n} end\n"
    "end\n"
    "local tpm = tonumber(ARGV[11] or '0')\n"
    "if tenant ~= '' and tpm > 0 then\n"
    "  local clock = redis.call('TIME')\n"
    "  local now = clock[1] * 1000 + math.floor(clock[2] / 1000)\n"
    "  local m = math.floor(now / 60000)\n"
    "  local t = pfx .. 'tenant:{' .. tenant .. '}:tokens:'\n"
    "  local cur = tonumber(redis.call('GET', t .. string.format('%d', m)) or '0')\n"
    "  local prev = tonumber(redis.call('GET', t .. string.format('%d', m - 1)) or '0')\n"
    "  local r = now % 60000\n"
    "  local used = math.floor(cur + prev * (1 - r / 60000))\n"
    "  if used >= tpm then\n"
    "    -- and the ms until the count falls below the budget, no job ending meanwhile (Retry-After)\n"
    "    local wait = cur < tpm and 60000 * (1 - (tpm - cur) / prev) - r or 60000 - r + 60000 * (1 - tpm / cur)\n"
    "    return {5, used, math.floor(wait)}\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'state', 'queued', 'model', ARGV[1], 'created', ARGV[2], 'attempts', '0')\n"
    "if tenant ~= '' then\n"
    "  redis.call('HSET', KEYS[1], 'tenant', tenant)\n"
    "  redis.call('SADD', tset, ARGV[3])\n"
    "end\n"
    "if ARGV[12] and ARGV[12] ~= '' then\n"
    "  redis.call('XADD', KEYS[2], '*', 'id', ARGV[3], 'p', ARGV[4], 'a', ARGV[12])\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], '*', 'id', ARGV[3], 'p', ARGV[4])\n"
    "end\n"
    "if KEYS[6] then\n"
    "  redis.call('HSET', KEYS[6], 'id', ARGV[3], 'body', ARGV[7])\n"
    "  if tonumber(ARGV[8]) > 0 then redis.call('EXPIRE', KEYS[6], ARGV[8]) end\n"
    "  redis.call('HSET', KEYS[1], 'idem', KEYS[6])\n"
    "end\n"
    "return {1, waiting}\n";

/* KEYS[1..3] every lane's stream; ARGV[1] group.  XGROUP CREATE on each;
 * BUSYGROUP only when none was created (see jobops_group_create). */
static const char group_lua[] =
    "local made = 0\n"
    "for l = 1, #KEYS do\n"
    "  local r = redis.pcall('XGROUP', 'CREATE', KEYS[l], ARGV[1], '0', 'MKSTREAM')\n"
    "  if type(r) == 'table' and r.err then\n"
    "    if string.sub(r.err, 1, 9) ~= 'BUSYGROUP' then return r end\n"
    "  else\n"
    "    made = made + 1\n"
    "  end\n"
    "end\n"
    "if made == 0 then return redis.error_reply('BUSYGROUP Consumer Group name already exists') end\n"
    "return made\n";

/* KEYS[1..3] every lane's stream, highest first; ARGV[1] group, ARGV[2]
 * consumer, ARGV[3] count, ARGV[4] the lane to take one entry from first
 * (1-based; 0 = none).  A lane that gave fewer entries than asked is
 * drained; the others are asked whether entries remain (the lag, or an
 * entry past the group's last delivered id when Redis has no lag). */
static const char read_lanes_lua[] =
    "local left = tonumber(ARGV[3])\n"
    "local got, drained, more = {}, {}, {}\n"
    "for l = 1, #KEYS do got[l] = {} end\n"
    "local function take(l, n)\n"
    "  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', KEYS[l], '>')\n"
    "  local e = r and r[1][2] or {}\n"
    "  for _, x in ipairs(e) do got[l][#got[l] + 1] = x end\n"
    "  if #e < n then drained[l] = true end\n"
    "  left = left - #e\n"
    "end\n"
    "local first = tonumber(ARGV[4])\n"
    "if first > 0 and left > 0 then take(first, 1) end\n"
    "for l = 1, #KEYS do\n"
    "  if left > 0 and not drained[l] then take(l, left) end\n"
    "end\n"
    "for l = 1, #KEYS do\n"
    "  more[l] = 0\n"
    "  if not drained[l] then\n"
    "    local groups = redis.pcall('XINFO', 'GROUPS', KEYS[l])\n"
    "    if type(groups) == 'table' and not groups.err then\n"
    "      for _, x in ipairs(groups) do\n"
    "        local name, lag, last\n"
    "        for i = 1, #x - 1, 2 do\n"
    "          if x[i] == 'name' then name = x[i + 1]\n"
    "          elseif x[i] == 'lag' then lag = x[i + 1]\n"
    "          elseif x[i] == 'last-delivered-id' then last = x[i + 1] end\n"
    "        end\n"
    "        if name == ARGV[1] then\n"
    "          if type(lag) == 'number' then\n"
    "            if lag > 0 then more[l] = 1 end\n"
    "          elseif last and #redis.call('XRANGE', KEYS[l], '(' .. last, '+', 'COUNT', 1) > 0 then\n"
    "            more[l] = 1\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "got[#KEYS + 1] = more\n"
    "return got\n";

/* The affinity pull (jobops_read_lanes_affinity): KEYS[1..3] every lane's
 * stream, highest first; ARGV[1] group, ARGV[2] consumer, ARGV[3] count,
 * ARGV[4] first lane (as read_lanes_lua), ARGV[5] the affinity keys'
 * prefix <P>aff:<model>#, ARGV[6] wait ms, ARGV[7] ttl s, ARGV[8] slack,
 * ARGV[9] takeover (1/0).  A group's record in <P>aff:<model>#groups is
 * "<free> <ms>"; one older than max(wait, 1 s) is a group gone or full
 * (it records only when it pulls, and it pulls only with room).  Keys are
 * taken from the field `a` only as 16 hex digits, 64 at most; of an
 * entry taken, the keys at positions 1, 2, 4, 8, ... and the last two are
 * set (the last: the longest prefix, or the prefix_key's with the longest
 * before it), so a request costs Redis a few keys, not one per unit, and a
 * prefix shared with it is still found at half its length or better.  A new
 * entry parked for another group does not count against count, but one
 * call reads at most count + 64 new entries per lane.  The reply's last
 * element counts what this call did, for the worker's /metrics: {parked
 * for another group, taken over after the wait, claimed from its own
 * parking, new entries whose keys named this group}. */
static const char read_affinity_lua[] =
    "local grp, me = ARGV[1], ARGV[2]\n"
    "local left = tonumber(ARGV[3])\n"
    "local apfx, wait = ARGV[5], tonumber(ARGV[6])\n"
    "local ttl, slack = tonumber(ARGV[7]), tonumber(ARGV[8])\n"
    "local gkey = apfx .. 'groups'\n"
    "local clock = redis.call('TIME')\n"
    "local now = clock[1] * 1000 + math.floor(clock[2] / 1000)\n"
    "local live = math.max(wait, 1000)\n"
    "local mine = left\n"
    "redis.call('HSET', gkey, me, mine .. ' ' .. now)\n"
    "local room = {}\n"
    "local function free_of(g)\n"
    "  if room[g] == nil then\n"
    "    room[g] = {-1, 0}\n"
    "    local v = redis.call('HGET', gkey, g)\n"
    "    if v then\n"
    "      local f, t = string.match(v, '^(%-?%d+) (%d+)$')\n"
    "      if f and now - tonumber(t) <= live then room[g] = {tonumber(f), t} end\n"
    "    end\n"
    "  end\n"
    "  return room[g][1]\n"
    "end\n"
    "local function keys_of(fields)\n"
    "  local ks = {}\n"
    "  for i = 1, #fields - 1, 2 do\n"
    "    if fields[i] == 'a' then\n"
    "      for k in string.gmatch(fields[i + 1], '%x+') do\n"
    "        if #k == 16 and #ks < 64 then ks[#ks + 1] = k end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return ks\n"
    "end\n"
    "local function owner_of(ks)\n"
    "  for i = #ks, 1, -1 do\n"
    "    local o = redis.call('GET', apfx .. ks[i])\n"
    "    if o then return o end\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    "local function register(fields)\n"
    "  local ks = keys_of(fields)\n"
    "  for i, k in ipairs(ks) do\n"
    "    if i >= #ks - 1 or bit.band(i, i - 1) == 0 then redis.call('SET', apfx .. k, me, 'EX', ttl) end\n"
    "  end\n"
    "end\n"
    "local got, drained, more, last = {}, {}, {}, {}\n"
    "local tally = {0, 0, 0, 0}\n"
    "for l = 1, #KEYS do got[l] = {} end\n"
    "local function keep(l, x)\n"
    "  if x[2] then register(x[2]) end\n"
    "  got[l][#got[l] + 1] = x\n"
    "  left = left - 1\n"
    "end\n"
    "local function claim(l, from, idle, t)\n"
    "  if left <= 0 then return end\n"
    "  local p = idle > 0 and redis.call('XPENDING', KEYS[l], grp, 'IDLE', idle, '-', '+', left, from)\n"
    "           or redis.call('XPENDING', KEYS[l], grp, '-', '+', left, from)\n"
    "  if #p == 0 then return end\n"
    "  local ids = {}\n"
    "  for _, e in ipairs(p) do ids[#ids + 1] = e[1] end\n"
    "  for _, x in ipairs(redis.call('XCLAIM', KEYS[l], grp, me, idle, unpack(ids))) do\n"
    "    if type(x) == 'table' then keep(l, x); tally[t] = tally[t] + 1 end\n"
    "  end\n"
    "end\n"
    "local function take(l, n)\n"
    "  local scanned = 0\n"
    "  while n > 0 and left > 0 and not drained[l] and scanned < n + 64 do\n"
    "    local r = redis.call('XREADGROUP', 'GROUP', grp, me, 'COUNT', n, 'STREAMS', KEYS[l], '>')\n"
    "    local e = r and r[1][2] or {}\n"
    "    if #e < n then drained[l] = true end\n"
    "    scanned = scanned + #e\n"
    "    for _, x in ipairs(e) do\n"
    "      local o = owner_of(keys_of(x[2]))\n"
    "      if o and o ~= me and free_of(o) > 0 and free_of(o) + slack >= left then\n"
    "        redis.call('XCLAIM', KEYS[l], grp, '@' .. o, 0, x[1], 'JUSTID')\n"
    "        room[o][1] = room[o][1] - 1\n"
    "        tally[1] = tally[1] + 1\n"
    "        redis.call('HSET', gkey, o, room[o][1] .. ' ' .. room[o][2])\n"
    "      else\n"
    "        if o == me then tally[4] = tally[4] + 1 end\n"
    "        keep(l, x)\n"
    "        n = n - 1\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local function lane(l, n)\n"
    "  claim(l, '@' .. me, 0, 3)\n"
    "  if ARGV[9] == '1' and left > 0 then\n"
    "    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[l], grp)) do\n"
    "      local name, pend\n"
    "      for i = 1, #c - 1, 2 do\n"
    "        if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pend = c[i + 1] end\n"
    "      end\n"
    "      if name and string.sub(name, 1, 1) == '@' and name ~= '@' .. me then\n"
    "        if pend and pend > 0 then claim(l, name, wait, 2)\n"
    "        elseif free_of(string.sub(name, 2)) < 0 then\n"
    "          redis.call('XGROUP', 'DELCONSUMER', KEYS[l], grp, name)\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  take(l, math.min(n, left))\n"
    "end\n"
    "local first = tonumber(ARGV[4])\n"
    "if first > 0 and left > 0 then lane(first, 1) end\n"
    "for l = 1, #KEYS do\n"
    "  if left > 0 then lane(l, left) end\n"
    "end\n"
    "for l = 1, #KEYS do\n"
    "  more[l] = 0\n"
    "  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[l])\n"
    "  if type(groups) == 'table' and not groups.err then\n"
    "    for _, x in ipairs(groups) do\n"
    "      local name, lag, ld\n"
    "      for i = 1, #x - 1, 2 do\n"
    "        if x[i] == 'name' then name = x[i + 1]\n"
    "        elseif x[i] == 'lag' then lag = x[i + 1]\n"
    "        elseif x[i] == 'last-delivered-id' then ld = x[i + 1] end\n"
    "      end\n"
    "      if name == grp then\n"
    "        if type(lag) == 'number' then\n"
    "          if lag > 0 then more[l] = 1 end\n"
    "        elseif ld and #redis.call('XRANGE', KEYS[l], '(' .. ld, '+', 'COUNT', 1) > 0 then\n"
    "          more[l] = 1\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  local top = redis.call('XREVRANGE', KEYS[l], '+', '-', 'COUNT', 1)\n"
    "  last[l] = top[1] and top[1][1] or '0-0'\n"
    "end\n"
    "got[#KEYS + 1] = more\n"
    "got[#KEYS + 2] = last\n"
    "got[#KEYS + 3] = tally\n"
    "return got\n";

/* Job i (from 1): KEYS[2i-1] job hash, KEYS[2i] output stream; ARGV[3i-2]
 * attempt, ARGV[3i-1] output channel, ARGV[3i] chunk.  See "Fencing" in
 * jobops.h.  pcall: a job whose keys are of the wrong type (or a write
 * refused for want of memory) gets its error in its own element, and the
 * jobs after it are still written. */
static const char chunks_lua[] =
    "local res = {}\n"
    "for i = 1, #KEYS / 2 do\n"
    "  local a = 3 * i\n"
    "  local h = redis.pcall('HMGET', KEYS[2 * i - 1], 'state', 'attempts')\n"
    "  if h.err then\n"
    "    res[i] = h\n"
    "  elseif h[1] ~= 'running' or h[2] ~= ARGV[a - 2] then\n"
    "    res[i] = 0\n"
    "  else\n"
    "    local x = redis.pcall('XADD', KEYS[2 * i], '*', 'c', ARGV[a])\n"
    "    if type(x) == 'table' and x.err then\n"
    "      res[i] = x\n"
    "    else\n"
    "      redis.call('PUBLISH', ARGV[a - 1], ARGV[a])\n"
    "      res[i] = 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return res\n";

/* KEYS[1] job hash, KEYS[2] output stream, KEYS[3] request stream, KEYS[4]
 * dead stream (only when the job goes there); ARGV[1] attempt (0: never
 * admitted), ARGV[2] output channel, ARGV[3] final chunk, ARGV[4] group,
 * ARGV[5] entry id ('' = none), ARGV[6] ttl s, ARGV[7] state, ARGV[8]
 * finish_reason, ARGV[9] finished ms, ARGV[10] prompt_tokens, ARGV[11]
 * completion_tokens, ARGV[12] error ('' = none), ARGV[13] job id, ARGV[14]
 * cached_tokens ('0' or absent = none). */
static const char finish_lua[] =
    END_JOB_LUA
    "local h = redis.call('HMGET', KEYS[1], 'state', 'attempts')\n"
    "local function ack_dead()\n"
    "  if ARGV[5] ~= '' then\n"
    "    redis.call('XACK', KEYS[3], ARGV[4], ARGV[5])\n"
    "    redis.call('XDEL', KEYS[3], ARGV[5])\n"
    "  end\n"
    "  if KEYS[4] then redis.call('XADD', KEYS[4], '*', 'id', ARGV[13], 'entry', ARGV[5], 'reason', ARGV[12]) end\n"
    "end\n"
    "if ARGV[1] ~= '0' then\n"
    "  if h[1] ~= 'running' or h[2] ~= ARGV[1] then return 0 end\n"
    "elseif h[1] and h[1] ~= 'queued' then\n"
    "  ack_dead()\n"
    "  return 2\n"
    "end\n"
    "redis.call('XADD', KEYS[2], '*', 'c', ARGV[3])\n"
    "redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
    "redis.call('HSET', KEYS[1], 'state', ARGV[7], 'finish_reason', ARGV[8], 'finished', ARGV[9],\n"
    "           'prompt_tokens', ARGV[10], 'completion_tokens', ARGV[11])\n"
    "if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[12]) end\n"
    "if ARGV[14] and ARGV[14] ~= '0' then redis.call('HSET', KEYS[1], 'cached_tokens', ARGV[14]) end\n"
    "ack_dead()\n"
    "end_job(KEYS[1], ARGV[13], ARGV[6], (tonumber(ARGV[10]) or 0) + (tonumber(ARGV[11]) or 0))\n"
    "if tonumber(ARGV[6]) > 0 then\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[6])\n"
    "  redis.call('EXPIRE', KEYS[2], ARGV[6])\n"
    "end\n"
    "return 1\n";

/* KEYS[1] the entry's lane stream; ARGV[1] group, ARGV[2] entry id. */
static const char ack_lua[] =
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "return redis.call('XDEL', KEYS[1], ARGV[2])\n";

/* KEYS[1] job hash, KEYS[2] the entry's lane stream, KEYS[3] dead stream;
 * ARGV[1] group, ARGV[2] entry id, ARGV[3] job id, ARGV[4] reason, ARGV[5]
 * now ms, ARGV[6] ttl s.  Every write checks its key's type first: the job
 * hash may be what is poisoned. */
static const char reject_lua[] =
    "redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[2], ARGV[2])\n"
    "redis.call('XADD', KEYS[3], '*', 'id', ARGV[3], 'entry', ARGV[2], 'reason', ARGV[4])\n"
    "if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 2 end\n"
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st == 'done' or st == 'failed' or st == 'cancelled' or st == 'expired' then return 2 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'failed', 'finish_reason', 'error', 'error', ARGV[4], 'finished', ARGV[5])\n"
    "if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[6]) end\n"
    "return 1\n";

/* kb->lanes: every lane's stream of model. */
static void lanes_fill(jobops_keys *kb, const llmq_keys *k, const char *model) {
    for (int l = 0; l < KEYS_LANES; l++) keys_req_lane(k, model, l, kb->lanes[l], sizeof kb->lanes[l]);
}

void jobops_submit(rcmd *hset, rcmd *xadd, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                   int32_t priority, const void *payload, size_t payload_len, int64_t now_ms) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_req_lane(k, model, keys_lane_of(priority), kb->req, sizeof kb->req);
    rcmd_init(hset);
    rcmd_str(hset, "HSET");
    rcmd_str(hset, kb->job);
    rcmd_str(hset, "state");
    rcmd_str(hset, "queued");
    rcmd_str(hset, "model");
    rcmd_str(hset, model);
    rcmd_str(hset, "created");
    rcmd_fmt(hset, "%" PRId64, now_ms);
    rcmd_str(hset, "attempts");
    rcmd_str(hset, "0");
    rcmd_init(xadd);
    rcmd_str(xadd, "XADD");
    rcmd_str(xadd, kb->req);
    rcmd_str(xadd, "*");
    rcmd_str(xadd, PROTO_FIELD_ID);
    rcmd_str(xadd, id);
    rcmd_str(xadd, PROTO_FIELD_REQ);
    rcmd_arg(xadd, payload, payload_len);
}

/* EVAL of submit_lua with its five keys and six arguments, plus the
 * idempotency hash when extra_key is given (the caller then appends ARGV[7]
 * and ARGV[8]). */
static void submit_eval(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *lua, const char *id,
                        const char *model, int32_t priority, const void *payload, size_t payload_len, int64_t now_ms,
                        long long max_queue, const char *extra_key) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_req_lane(k, model, keys_lane_of(priority), kb->req, sizeof kb->req);
    lanes_fill(kb, k, model);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, lua);
    rcmd_fmt(c, "%d", 2 + KEYS_LANES + (extra_key ? 1 : 0));
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->req);
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, kb->lanes[l]);
    if (extra_key) rcmd_str(c, extra_key);
    rcmd_str(c, model);
    rcmd_fmt(c, "%" PRId64, now_ms);
    rcmd_str(c, id);
    rcmd_arg(c, payload, payload_len);
    rcmd_fmt(c, "%lld", max_queue > 0 ? max_queue : 0);
    rcmd_str(c, PROTO_GROUP);
}

void jobops_submit_bounded(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                           int32_t priority, const void *payload, size_t payload_len, int64_t now_ms,
                           long long max_queue) {
    submit_eval(c, kb, k, submit_lua, id, model, priority, payload, payload_len, now_ms, max_queue, NULL);
}

void jobops_submit_idem(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                        int32_t priority, const void *payload, size_t payload_len, int64_t now_ms, long long max_queue,
                        const char *idem_key, const char *body_hash, int64_t ttl_s) {
    keys_idem(k, idem_key, kb->idem, sizeof kb->idem);
    submit_eval(c, kb, k, submit_lua, id, model, priority, payload, payload_len, now_ms, max_queue, kb->idem);
    rcmd_str(c, body_hash);
    rcmd_fmt(c, "%" PRId64, ttl_s);
}

void jobops_submit_as(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                      int32_t priority, const void *payload, size_t payload_len, int64_t now_ms, long long max_queue,
                      const jobops_owner *o) {
    const char *tenant = o->tenant ? o->tenant : "";
    if (o->idem_key) { /* namespaced: <P>idem:{<tenant>:<key>} (keys_idem takes any text) */
        char name[KEYS_MAX];
        snprintf(name, sizeof name, "%s%s%s", tenant, *tenant ? ":" : "", o->idem_key);
        keys_idem(k, name, kb->idem, sizeof kb->idem);
    }
    submit_eval(c, kb, k, submit_lua, id, model, priority, payload, payload_len, now_ms, max_queue,
                o->idem_key ? kb->idem : NULL);
    rcmd_str(c, o->idem_key && o->body_hash ? o->body_hash : ""); /* ARGV[7], ARGV[8] */
    rcmd_fmt(c, "%" PRId64, o->idem_key ? o->idem_ttl_s : 0);
    rcmd_str(c, tenant); /* ARGV[9], ARGV[10], ARGV[11] */
    rcmd_fmt(c, "%lld", *tenant && o->max_jobs > 0 ? o->max_jobs : 0);
    rcmd_fmt(c, "%lld", *tenant && o->tokens_per_minute > 0 ? o->tokens_per_minute : 0); /* ARGV[11] */
    rcmd_str(c, o->affinity ? o->affinity : ""); /* ARGV[12] */
}

void jobops_submit_affinity(rcmd *xadd, const char *keys) {
    if (!keys || !*keys) return;
    rcmd_str(xadd, AFFINITY_FIELD);
    rcmd_str(xadd, keys);
}

void jobops_group_create(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model) {
    lanes_fill(kb, k, model);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, group_lua);
    rcmd_fmt(c, "%d", KEYS_LANES);
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, kb->lanes[l]);
    rcmd_str(c, PROTO_GROUP);
}

void jobops_read_lanes(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, const char *consumer,
                       int count, int first_lane) {
    lanes_fill(kb, k, model);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, read_lanes_lua);
    rcmd_fmt(c, "%d", KEYS_LANES);
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, kb->lanes[l]);
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, consumer);
    rcmd_fmt(c, "%d", count > 0 ? count : 0);
    rcmd_fmt(c, "%d", first_lane >= 0 && first_lane < KEYS_LANES ? first_lane + 1 : 0);
}

void jobops_read_lanes_affinity(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model,
                                const char *consumer, int count, int first_lane, const jobops_affinity *a) {
    lanes_fill(kb, k, model);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, read_affinity_lua);
    rcmd_fmt(c, "%d", KEYS_LANES);
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, kb->lanes[l]);
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, consumer);
    rcmd_fmt(c, "%d", count > 0 ? count : 0);
    rcmd_fmt(c, "%d", first_lane >= 0 && first_lane < KEYS_LANES ? first_lane + 1 : 0);
    rcmd_fmt(c, "%saff:%s#", k->prefix, model);
    rcmd_fmt(c, "%d", a->wait_ms > 0 ? a->wait_ms : 0);
    rcmd_fmt(c, "%d", a->ttl_s > 0 ? a->ttl_s : 1);
    rcmd_fmt(c, "%d", a->slack);
    rcmd_str(c, a->takeover ? "1" : "0");
}

void jobops_wait_lanes(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model,
                       char last[KEYS_LANES][48], int block_ms) {
    lanes_fill(kb, k, model);
    rcmd_init(c);
    rcmd_str(c, "XREAD");
    rcmd_str(c, "COUNT");
    rcmd_str(c, "1");
    rcmd_str(c, "BLOCK");
    rcmd_fmt(c, "%d", block_ms > 0 ? block_ms : 1);
    rcmd_str(c, "STREAMS");
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, kb->lanes[l]);
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, last[l][0] ? last[l] : "$");
}

void jobops_read_all(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, const char *consumer,
                     int count, int block_ms, const char *id) {
    lanes_fill(kb, k, model);
    rcmd_init(c);
    rcmd_str(c, "XREADGROUP");
    rcmd_str(c, "GROUP");
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, consumer);
    if (count > 0) {
        rcmd_str(c, "COUNT");
        rcmd_fmt(c, "%d", count);
    }
    if (block_ms >= 0) {
        rcmd_str(c, "BLOCK");
        rcmd_fmt(c, "%d", block_ms);
    }
    rcmd_str(c, "STREAMS");
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, kb->lanes[l]);
    for (int l = 0; l < KEYS_LANES; l++) rcmd_str(c, id);
}

int jobops_lane_of_key(const jobops_keys *kb, const char *name, size_t len) {
    for (int l = 0; l < KEYS_LANES; l++)
        if (strlen(kb->lanes[l]) == len && !memcmp(kb->lanes[l], name, len)) return l;
    return -1;
}

void jobops_cancel(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, int64_t now_ms, int64_t result_ttl_s,
                   const void *final_chunk, size_t final_chunk_len) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_job_out(k, id, kb->out, sizeof kb->out);
    keys_out_channel(k, id, kb->chan, sizeof kb->chan);
    keys_cancel_channel(k, kb->cancel, sizeof kb->cancel);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, cancel_lua);
    rcmd_str(c, "2");
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->out);
    rcmd_str(c, kb->chan);
    rcmd_str(c, kb->cancel);
    rcmd_str(c, id);
    rcmd_fmt(c, "%" PRId64, now_ms);
    rcmd_fmt(c, "%" PRId64, result_ttl_s);
    rcmd_arg(c, final_chunk, final_chunk_len);
}

void jobops_cancel_as(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, int64_t now_ms,
                      int64_t result_ttl_s, const void *final_chunk, size_t final_chunk_len, const char *tenant) {
    jobops_cancel(c, kb, k, id, now_ms, result_ttl_s, final_chunk, final_chunk_len);
    rcmd_str(c, tenant ? tenant : ""); /* ARGV[7] */
}

llmq_status jobops_cancel_chunk(proto_buf *out, llmq_err *err) {
    proto_chunk ch;
    proto_chunk_init(&ch);
    ch.seq = 0;
    ch.finish = (char *)"cancelled";
    ch.has_usage = true;
    return proto_chunk_encode(&ch, out, err);
}

void jobops_admit(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, const char *worker,
                  int64_t now_ms, uint64_t seed) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_job_out(k, id, kb->out, sizeof kb->out);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, admit_lua);
    rcmd_str(c, "2");
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->out);
    rcmd_str(c, model);
    rcmd_str(c, worker);
    rcmd_fmt(c, "%" PRId64, now_ms);
    rcmd_fmt(c, "%" PRIu64, seed);
}

void jobops_ack(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, int lane, const char *entry) {
    keys_req_lane(k, model, lane, kb->req, sizeof kb->req);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, ack_lua);
    rcmd_str(c, "1");
    rcmd_str(c, kb->req);
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, entry);
}

void jobops_reject(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, int lane,
                   const char *entry, const char *reason, int64_t now_ms, int64_t result_ttl_s) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_req_lane(k, model, lane, kb->req, sizeof kb->req);
    keys_dead_stream(k, model, kb->dead, sizeof kb->dead);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, reject_lua);
    rcmd_str(c, "3");
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->req);
    rcmd_str(c, kb->dead);
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, entry);
    rcmd_str(c, id);
    rcmd_str(c, reason);
    rcmd_fmt(c, "%" PRId64, now_ms);
    rcmd_fmt(c, "%" PRId64, result_ttl_s);
}

void jobops_dead(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, const char *id, const char *entry,
                 const char *reason) {
    keys_dead_stream(k, model, kb->dead, sizeof kb->dead);
    rcmd_init(c);
    rcmd_str(c, "XADD");
    rcmd_str(c, kb->dead);
    rcmd_str(c, "*");
    rcmd_str(c, "id");
    rcmd_str(c, id);
    rcmd_str(c, "entry");
    rcmd_str(c, entry ? entry : "");
    rcmd_str(c, "reason");
    rcmd_str(c, reason);
}

void jobops_chunk(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, long long attempt, const void *chunk,
                  size_t chunk_len) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_job_out(k, id, kb->out, sizeof kb->out);
    keys_out_channel(k, id, kb->chan, sizeof kb->chan);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, chunks_lua);
    rcmd_str(c, "2");
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->out);
    rcmd_fmt(c, "%lld", attempt);
    rcmd_str(c, kb->chan);
    rcmd_arg(c, chunk, chunk_len);
}

void jobops_finish(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, int lane,
                   const char *entry, long long attempt, const jobops_final *f, int64_t result_ttl_s,
                   const void *chunk, size_t chunk_len) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_job_out(k, id, kb->out, sizeof kb->out);
    keys_out_channel(k, id, kb->chan, sizeof kb->chan);
    keys_req_lane(k, model, lane, kb->req, sizeof kb->req);
    keys_dead_stream(k, model, kb->dead, sizeof kb->dead);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, finish_lua);
    rcmd_str(c, f->dead ? "4" : "3");
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->out);
    rcmd_str(c, kb->req);
    if (f->dead) rcmd_str(c, kb->dead);
    rcmd_fmt(c, "%lld", attempt);
    rcmd_str(c, kb->chan);
    rcmd_arg(c, chunk, chunk_len);
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, entry ? entry : "");
    rcmd_fmt(c, "%" PRId64, result_ttl_s);
    rcmd_str(c, f->state);
    rcmd_str(c, f->finish_reason);
    rcmd_fmt(c, "%" PRId64, f->finished_ms);
    rcmd_fmt(c, "%lld", f->prompt_tokens);
    rcmd_fmt(c, "%lld", f->completion_tokens);
    rcmd_str(c, f->error ? f->error : "");
    rcmd_str(c, id);
    rcmd_fmt(c, "%lld", f->cached_tokens > 0 ? f->cached_tokens : 0);
}

/* ------------------------------------------------------------ chunks of many jobs */

/* Where one chunk's arguments lie in b->bytes (offsets, NUL-terminated but
 * the chunk). */
struct jobops_chunk_at {
    size_t id, job, out, chan, attempt, chunk, chunk_len;
};

void jobops_chunks_init(jobops_chunks *b) { memset(b, 0, sizeof *b); }

void jobops_chunks_deinit(jobops_chunks *b) {
    free(b->at);
    free(b->bytes);
    free(b->argv);
    free(b->argvlen);
    memset(b, 0, sizeof *b);
}

void jobops_chunks_reset(jobops_chunks *b) {
    b->n = 0;
    b->len = 0;
}

/* n more bytes at the end of b->bytes; their offset, or (size_t)-1. */
static size_t chunks_room(jobops_chunks *b, size_t n) {
    if (b->len + n > b->cap_bytes) {
        size_t cap = b->cap_bytes ? b->cap_bytes : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->bytes, cap);
        if (!p) return (size_t)-1;
        b->bytes = p;
        b->cap_bytes = cap;
    }
    size_t at = b->len;
    b->len += n;
    return at;
}

int jobops_chunks_add(jobops_chunks *b, const llmq_keys *k, const char *id, long long attempt, const void *chunk,
                      size_t chunk_len) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 32;
        struct jobops_chunk_at *at = realloc(b->at, (size_t)cap * sizeof *at);
        if (!at) return -1;
        b->at = at;
        b->cap = cap;
    }
    char job[KEYS_MAX], out[KEYS_MAX], chan[KEYS_MAX], attempt_s[24];
    keys_job(k, id, job, sizeof job);
    keys_job_out(k, id, out, sizeof out);
    keys_out_channel(k, id, chan, sizeof chan);
    snprintf(attempt_s, sizeof attempt_s, "%lld", attempt);
    const char *parts[] = {id, job, out, chan, attempt_s};
    size_t off[5], len0 = b->len;
    for (int i = 0; i < 5; i++) {
        size_t n = strlen(parts[i]) + 1;
        if ((off[i] = chunks_room(b, n)) == (size_t)-1) {
            b->len = len0;
            return -1;
        }
        memcpy(b->bytes + off[i], parts[i], n);
    }
    size_t c = chunks_room(b, chunk_len);
    if (c == (size_t)-1) {
        b->len = len0;
        return -1;
    }
    if (chunk_len) memcpy(b->bytes + c, chunk, chunk_len);
    b->at[b->n++] = (struct jobops_chunk_at){off[0], off[1], off[2], off[3], off[4], c, chunk_len};
    return 0;
}

const char *jobops_chunks_id(const jobops_chunks *b, int i) { return b->bytes + b->at[i].id; }

const char *jobops_chunks_script(void) { return chunks_lua; }

int jobops_is_script(const char *text) {
    static const char *const all[] = {cancel_lua, admit_lua,  submit_lua, group_lua, read_lanes_lua,
                                      chunks_lua, finish_lua, ack_lua,    reject_lua, read_affinity_lua};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (text == all[i]) return 1;
    return 0;
}

int jobops_chunks_argv(jobops_chunks *b, const char *sha, const char ***argv, const size_t **argvlen) {
    const int argc = 3 + 5 * b->n;
    if (argc > b->cap_argv) {
        const char **v = realloc(b->argv, (size_t)argc * sizeof *v);
        if (!v) return -1;
        b->argv = v;
        size_t *l = realloc(b->argvlen, (size_t)argc * sizeof *l);
        if (!l) return -1;
        b->argvlen = l;
        b->cap_argv = argc;
    }
    snprintf(b->nkeys, sizeof b->nkeys, "%d", 2 * b->n);
    int a = 0;
#define ARG(p, n) (b->argv[a] = (p), b->argvlen[a] = (n), a++)
    if (sha) {
        ARG("EVALSHA", 7);
        ARG(sha, strlen(sha));
    } else {
        ARG("EVAL", 4);
        ARG(chunks_lua, sizeof chunks_lua - 1);
    }
    ARG(b->nkeys, strlen(b->nkeys));
    for (int i = 0; i < b->n; i++) {
        ARG(b->bytes + b->at[i].job, strlen(b->bytes + b->at[i].job));
        ARG(b->bytes + b->at[i].out, strlen(b->bytes + b->at[i].out));
    }
    for (int i = 0; i < b->n; i++) {
        ARG(b->bytes + b->at[i].attempt, strlen(b->bytes + b->at[i].attempt));
        ARG(b->bytes + b->at[i].chan, strlen(b->bytes + b->at[i].chan));
        ARG(b->bytes + b->at[i].chunk, b->at[i].chunk_len);
    }
#undef ARG
    *argv = b->argv;
    *argvlen = b->argvlen;
    return argc;
}
