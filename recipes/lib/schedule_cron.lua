-- The schedule as cron lines: /etc/cron.d/bkr (with the user field), or lines for a user
-- crontab (docs/schedule.md). cron runs every command through /bin/sh, so every word is
-- single-quoted; and cron itself turns an unescaped % into a newline (the rest becomes the
-- command's stdin) before the shell sees the line, so each % is written as \% outside the
-- quotes, which cron turns back into a plain %.
local schedule = require "lib.schedule"

local cron = { name = "cron", default_dir = "/etc/cron.d", file = "bkr" }

-- One word for /bin/sh inside a cron line: 'it'\''s' with every % as '\%'.
function cron.quote(word)
  local pieces = {}
  for piece in (word .. "%"):gmatch("([^%%]*)%%") do
    pieces[#pieces + 1] = "'" .. piece:gsub("'", "'\\''") .. "'"
  end
  return table.concat(pieces, "\\%")
end

-- The five time fields: minute hour day-of-month month day-of-week (Sunday is 0).
function cron.time_fields(job)
  local dow = "*"
  if job.days ~= "daily" then
    local numbers = {}
    for i, key in ipairs(job.days) do
      for _, day in ipairs(schedule.DAYS) do
        if day.key == key then numbers[i] = tostring(day.cron) end
      end
    end
    dow = table.concat(numbers, ",")
  end
  return string.format("%d %d * * %s", job.at.minute, job.at.hour, dow)
end

-- The command field: NAME='value' assignments for the job's environment, then its argv.
local function command(plan, job)
  local words = {}
  for _, pair in ipairs(schedule.environment(job, plan)) do
    words[#words + 1] = pair[1] .. "=" .. cron.quote(pair[2])
  end
  for _, word in ipairs(schedule.command(job, plan)) do words[#words + 1] = cron.quote(word) end
  return table.concat(words, " ")
end

-- Lines for `crontab -e` (no user field) or for /etc/cron.d (with it).
function cron.lines(plan, with_user)
  local lines = {}
  for _, job in ipairs(plan.schedule.jobs) do
    lines[#lines + 1] = "# bkr job " .. job.name .. ", " .. schedule.days_text(job.days) .. " at "
      .. schedule.time_text(job.at)
    lines[#lines + 1] = cron.time_fields(job) .. " " .. (with_user and (plan.schedule.user .. " ") or "")
      .. command(plan, job)
  end
  return lines
end

function cron.files(plan)
  local content = table.concat({
    "# " .. schedule.MARKER,
    "# bkr jobs (docs/schedule.md). cron mails what a job prints to MAILTO; bkr prints errors on stderr.",
    "# minute hour day-of-month month day-of-week user command",
    "SHELL=/bin/sh",
  }, "\n") .. "\n" .. table.concat(cron.lines(plan, true), "\n") .. "\n"
  return { { name = cron.file, content = content, mode = "0644" } }
end

-- cron rereads /etc/cron.d by itself: nothing to run.
function cron.after_install() return {} end
function cron.before_remove() return {} end
function cron.after_remove() return {} end
function cron.same_kind() return false end

return cron
