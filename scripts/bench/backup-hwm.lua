-- bkr run scripts/bench/backup-hwm.lua BACKUP-ARGS...: runs the backup recipe exactly as
-- `bkr backup BACKUP-ARGS...` does, then writes this process's own peak RSS (VmHWM, KiB; all
-- of bkr's threads, not its pg_dump child) to the file named by BENCH_HWM.
local recipe
for _, dir in ipairs(bkr.recipe_path) do
  local f = io.open(dir .. "/backup.lua")
  if f then f:close(); recipe = dir .. "/backup.lua"; break end
end
local code = assert(loadfile(assert(recipe, "no backup.lua on the recipe path")))(...)
local status = assert(io.open("/proc/self/status")):read("a")
local f = assert(io.open(assert(os.getenv("BENCH_HWM"), "BENCH_HWM is not set"), "w"))
f:write(status:match("VmHWM:%s*(%d+)"), "\n")
f:close()
return code
