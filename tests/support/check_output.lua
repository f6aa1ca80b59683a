-- bkr check's three outputs read with independent parsers, for the specs of check
-- (tests/check_spec.lua, tests/check_s3_spec.lua): the plugin line against the Monitoring
-- Plugins guidelines' perfdata grammar, --json with jq, --prometheus with python3's
-- prometheus_client.
local assert = require "luassert"
local util = require "support.util"
local q = util.quote

local output = {}

-- The performance data after '|', as the Nagios plugin guidelines define it: space-separated
-- 'label'=value[UOM];[warn];[crit];[min];[max], a quoted label with '' for a quote, no '=' in
-- a label, value a number or U. Returns { {label, value, uom, warn, crit, min, max} }.
function output.parse_perfdata(data)
  local items, i = {}, 1
  while i <= #data do
    local label
    if data:sub(i, i) == "'" then
      local parts, k = {}, i + 1
      while true do
        local c = data:sub(k, k)
        assert(c ~= "", "unterminated label in: " .. data)
        if c == "'" and data:sub(k + 1, k + 1) == "'" then
          parts[#parts + 1], k = "'", k + 2
        elseif c == "'" then
          break
        else
          parts[#parts + 1], k = c, k + 1
        end
      end
      label, i = table.concat(parts), k + 1
    else
      label = data:match("^[^%s=']+", i)
      assert(label, "no label at " .. i .. " in: " .. data)
      i = i + #label
    end
    assert(not label:find("[=\n]"), "a label may hold neither '=' nor a newline: " .. label)
    local spec = data:match("^=(%S+)", i)
    assert(spec, "no '=value' after label " .. label)
    i = i + 1 + #spec
    local fields = {}
    for f in (spec .. ";"):gmatch("([^;]*);") do fields[#fields + 1] = f end
    assert(#fields <= 5, "too many fields: " .. spec)
    local value, uom = fields[1]:match("^(%-?[%d%.]+)([%a%%]*)$")
    if fields[1] == "U" then value = "U" end
    assert(value, "not a value: " .. fields[1])
    for n = 2, #fields do
      assert(fields[n] == "" or fields[n]:match("^@?~?%-?[%d%.]*:?%-?[%d%.]*$"), "not a range: " .. fields[n])
    end
    items[#items + 1] = { label = label, value = value, uom = uom, warn = fields[2], crit = fields[3],
      min = fields[4], max = fields[5] }
    if data:sub(i, i) == " " then i = i + 1 end
  end
  return items
end

-- One line of plugin output: "BKR STATE - text | perfdata" with nothing after it.
function output.plugin_output(out)
  assert.matches("^BKR %u+ %- [^\n]*\n$", out, nil, false, "one line: " .. out)
  local state, text, data = out:match("^BKR (%u+) %- ([^|]*) | ([^\n]*)\n$")
  assert(state, "no ' | ' before the performance data: " .. out)
  local perf = {}
  for _, item in ipairs(output.parse_perfdata(data)) do perf[item.label] = item end
  return state, text, perf
end

-- The samples in a textfile-collector file, as prometheus_client's parser reads them
-- (Debian's python3-prometheus-client, in the system python), and a check of each line
-- against the text format's grammar. Returns { "name{sorted labels}" = value }.
local PROM_PARSE = [[
import json, re, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
assert text.endswith("\n"), "the file ends with a newline"
name = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
value = r'"(?:[^"\\\n]|\\[\\"n])*"'
sample = re.compile(r"^(%s)(\{%s=%s(?:,%s=%s)*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$" % (name, name, value, name, value))
seen = []
for line in text.splitlines():
    if line.startswith("# HELP ") or line.startswith("# TYPE "):
        parts = line.split(" ", 3)
        assert re.fullmatch(name, parts[2]), line
        if parts[1] == "TYPE":
            assert parts[3] == "gauge", line
            assert parts[2] not in seen, "one family once: " + line
            seen.append(parts[2])
        continue
    m = sample.match(line)
    assert m, "not a sample line: " + repr(line)
    assert m.group(1) == seen[-1], "a sample under its own family's TYPE: " + line
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join("%s=%s" % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + "{" + labels + "}"] = s.value
print(json.dumps(out))
]]

function output.prometheus_samples(path)
  local script = util.scratch("py") .. "/parse.py"
  util.write(script, PROM_PARSE)
  local out, rc = util.sh("/usr/bin/python3 " .. q(script) .. " " .. q(path) .. " 2>&1")
  assert.are.equal(0, rc, "the metrics do not parse (is python3-prometheus-client installed?): " .. out)
  return require("dkjson").decode(out)
end

function output.jq(json_text, filter)
  local file = util.scratch("json") .. "/out.json"
  util.write(file, json_text)
  local out, rc = util.sh("jq -r " .. q(filter) .. " " .. q(file) .. " 2>&1")
  assert.are.equal(0, rc, "jq: " .. out .. " in " .. json_text)
  return (out:gsub("\n$", ""))
end

return output
