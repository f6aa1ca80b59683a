-- Runs busted inside the bkr host, so specs require the native modules as recipes do:
--   bkr run tests/runner.lua [busted options] [specs...]
-- scripts/run-tests.sh is the usual way in: it starts the throwaway cluster first.
package.path = "./tests/?.lua;" .. package.path
require "busted.runner"({ standalone = false })
