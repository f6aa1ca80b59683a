-- busted output handler: the plain terminal output, then a count for this binary, also
-- written to $BKR_TEST_SUMMARY for scripts/run-tests.sh, which prints the closing line
-- "N passed, N failed" over every binary it ran. Errors (a spec file that does not load,
-- a failing before_each) count as failed.
return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.plainTerminal"(options)
  busted.subscribe({ "suite", "end" }, function()
    local passed, failed = #handler.successes, #handler.failures + #handler.errors
    local skipped = #handler.pendings
    io.write(string.format("\n(this binary) passed %d, failed %d, skipped %d\n", passed, failed, skipped))
    io.flush()
    local path = os.getenv("BKR_TEST_SUMMARY")
    if path then
      local f = io.open(path, "w")
      if f then
        f:write(passed, " ", failed, "\n")
        f:close()
      end
    end
    return nil, true
  end)
  return handler
end
