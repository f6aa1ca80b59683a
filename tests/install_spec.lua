-- make install / make uninstall: the installed bkr finds its recipes without any variable.
local util = require "support.util"
local q = util.quote
local source = os.getenv("BKR_SOURCE_DIR") or "."

describe("make install", function()
  it("installs bkr, the recipes and the docs under PREFIX, and uninstall removes them", function()
    local prefix = util.scratch("prefix")
    local out, rc = util.sh("make -s -C " .. q(source) .. " install PREFIX=" .. q(prefix) .. " 2>&1")
    assert.are.equal(0, rc, out)
    for _, path in ipairs({ "/bin/bkr", "/share/bkr/recipes/backup.lua", "/share/bkr/recipes/lib/config.lua",
      "/share/doc/bkr/README.md", "/share/doc/bkr/runtime.md",
      "/share/doc/bkr/bkr.example.yaml", "/share/doc/bkr/api/fs.md" }) do
      assert.is_truthy(io.open(prefix .. path), path)
    end
    -- from another directory, with no recipe path set
    out, rc = util.sh("cd / && env -u BKR_RECIPE_PATH " .. q(prefix .. "/bin/bkr") .. " --help")
    assert.are.equal(0, rc, out)
    assert.matches("backup%s+Back up databases", out)
    assert.matches("Recipe path: " .. prefix:gsub("%p", "%%%0") .. "/share/bkr/recipes", out)
    out, rc = util.sh("cd / && " .. q(prefix .. "/bin/bkr") .. " list --repo " .. q(util.scratch("emptyrepo")))
    assert.are.equal(0, rc, out)
    out, rc = util.sh("make -s -C " .. q(source) .. " uninstall PREFIX=" .. q(prefix) .. " 2>&1")
    assert.are.equal(0, rc, out)
    assert.are.equal("", util.sh("find " .. q(prefix) .. " -type f"))
  end)

  it("stages into DESTDIR for packagers, and the staged binary finds its staged recipes", function()
    local stage = util.scratch("stage")
    local out, rc = util.sh("make -s -C " .. q(source) .. " install DESTDIR=" .. q(stage) .. " PREFIX=/usr 2>&1")
    assert.are.equal(0, rc, out)
    out, rc = util.sh(q(stage .. "/usr/bin/bkr") .. " --help")
    assert.are.equal(0, rc, out)
    assert.matches("Recipe path: " .. stage:gsub("%p", "%%%0") .. "/usr/share/bkr/recipes", out)
    assert.is_truthy(io.open(stage .. "/usr/share/bkr/recipes/restore.lua"))
  end)
end)
