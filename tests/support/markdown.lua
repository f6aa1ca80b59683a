-- Reading the docs' fenced blocks and their test markers, for the specs that run a page's
-- commands (recovery_guide_spec, first_hour_spec). A marker is an HTML comment on the line
-- right before a block: <!-- test: skip (reason) -->, <!-- test: expect exit N -->,
-- <!-- test: diagnostic (reason) -->, <!-- test: file PATH -->.
local markdown = {}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Fenced blocks with their language, marker and section. Returns
-- { fences = { {lang, line} }, sections = { { number, title, blocks = { {code, line, skip, expect, marker} } } } }
function markdown.parse(text)
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local doc = { fences = {}, sections = {} }
  local section = { title = "(before the first heading)", blocks = {} }
  doc.sections[1] = section
  local marker, marker_line
  local i = 1
  while i <= #lines do
    local line = lines[i]
    local heading = line:match("^## (.+)$")
    local comment = trim(line):match("^<!%-%- test: (.-) %-%->$")
    local indent, lang = line:match("^(%s*)```(%S*)%s*$")
    if heading then
      local number, title = heading:match("^(%d+)%. (.+)$")
      section = { number = tonumber(number), title = title or heading, blocks = {} }
      doc.sections[#doc.sections + 1] = section
    elseif comment then
      marker, marker_line = comment, i
    elseif indent then
      local start = i
      local code = {}
      i = i + 1
      while i <= #lines and not lines[i]:match("^%s*```%s*$") do
        local l = lines[i]
        if l:sub(1, #indent) == indent then l = l:sub(#indent + 1) end
        code[#code + 1] = l
        i = i + 1
      end
      assert(i <= #lines, "unclosed code block at line " .. start)
      doc.fences[#doc.fences + 1] = { lang = lang, line = start }
      local block = { lang = lang, code = table.concat(code, "\n") .. "\n", line = start }
      if marker then
        assert(marker_line == start - 1, "test marker at line " .. marker_line .. " is not right before a code block")
        block.marker = marker
        block.skip = marker:match("^skip %((.+)%)$")
        block.expect = tonumber(marker:match("^expect exit (%d+)$"))
        block.diagnostic = marker:match("^diagnostic %((.+)%)$")
        block.file = marker:match("^file (%S+)$")
        marker = nil
      end
      section.blocks[#section.blocks + 1] = block
    end
    if marker and marker_line < i - 1 then error("test marker at line " .. marker_line .. " is not right before a code block") end
    i = i + 1
  end
  return doc
end

function markdown.sh_blocks(section)
  local list = {}
  for _, block in ipairs(section.blocks) do
    if block.lang == "sh" then list[#list + 1] = block end
  end
  return list
end

return markdown
