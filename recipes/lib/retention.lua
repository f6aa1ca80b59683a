-- Retention policy: which backups to keep. One function, `retention.keep`, that an integrator
-- can replace per customer by shadowing this file (BKR_RECIPE_PATH/lib/retention.lua);
-- docs/rotation.md shows a grandfather-father-son and a keep-by-age variant.
local retention = {}

-- backups: the backups of ONE database (or the globals) of ONE type, newest first (two runs
--          in one second are ordered by .sequence), each with .time (epoch, UTC), .sequence,
--          .stamp, .path, .type, .verified ("passed"/"failed"/nil)
-- counts:  the configured retention { daily = 7, weekly = 4, monthly = 0 }
-- now:     epoch seconds
-- returns: a set { [backup] = "reason kept" } of the backups to keep.
function retention.keep(backups, counts, now)
  local keep = {}
  local limit = counts[backups[1] and backups[1].type] or 0
  for i, backup in ipairs(backups) do
    if i <= limit then keep[backup] = string.format("newest %d %s", limit, backup.type) end
  end
  return keep
end

-- ------------------------------------------------------------------ the plan (not policy)

local function group_key(backup)
  return (backup.database or "(globals)") .. "\0" .. backup.type
end

-- Apply the policy to every (database, type) group. Whatever the policy says, these are
-- never removed: the newest backup of each database that passed verification, and the
-- paths in `protect` (what the running backup just wrote).
-- Returns remove, keep: arrays of { backup = b, reason = "..." }.
function retention.plan(backups, counts, now, protect)
  local groups, order = {}, {}
  for _, backup in ipairs(backups) do
    local key = group_key(backup)
    if not groups[key] then
      groups[key] = {}
      order[#order + 1] = key
    end
    table.insert(groups[key], backup)
  end

  local kept = {}
  local newest_verified = {}
  for _, backup in ipairs(backups) do
    local db = backup.database or "(globals)"
    if backup.verified == "passed" and not newest_verified[db] then
      newest_verified[db] = backup
      kept[backup] = "newest verified backup of " .. db
    end
  end
  for _, path in ipairs(protect or {}) do
    for _, backup in ipairs(backups) do
      if backup.path == path then kept[backup] = "written by this run" end
    end
  end
  for _, key in ipairs(order) do
    for backup, reason in pairs(retention.keep(groups[key], counts, now)) do
      kept[backup] = kept[backup] or reason
    end
  end

  local remove, keep = {}, {}
  for _, backup in ipairs(backups) do
    if kept[backup] then
      keep[#keep + 1] = { backup = backup, reason = kept[backup] }
    else
      remove[#remove + 1] = { backup = backup, reason = "beyond retention" }
    end
  end
  return remove, keep
end

return retention
