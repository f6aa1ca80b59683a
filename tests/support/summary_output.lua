-- busted output handler: the plain terminal output, then one closing line that CI reads:
--   N passed, N failed[, N skipped]
-- Errors (a spec file that does not load, a failing before_each) count as failed.
return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.plainTerminal"(options)
  busted.subscribe({ "suite", "end" }, function()
    local failed = #handler.failures + #handler.errors
    local line = string.format("%d passed, %d failed", #handler.successes, failed)
    if #handler.pendings > 0 then
      line = line .. string.format(", %d skipped", #handler.pendings)
    end
    io.write("\n", line, "\n")
    io.flush()
    return nil, true
  end)
  return handler
end
