"""Lua shared by the Redis tables' scripts."""

# Prepend to a script that reads the time and then writes. Such a script must be replicated
# by its effects (the default since Redis 5; older versions need the call); now_ms() is
# Redis's own clock, the one PEXPIRE deadlines run on, so all relays sharing a Redis agree.
PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
