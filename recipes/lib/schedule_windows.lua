-- The schedule as Windows Task Scheduler tasks, for bkr inside WSL 2 (docs/schedule.md):
-- per job bkr-JOB.xml (Task Scheduler schema 1.2), and one PowerShell script bkr-task.ps1
-- that registers the tasks (-Register), removes them (-Unregister), and runs a job (-Job NAME)
-- through `wsl.exe --exec` (no Linux shell), records its outcome in the Application event log
-- and a log file, and sends the failure e-mail itself when WSL cannot run the job at all.
-- Quoting: XML escapes in the task files; PowerShell single-quoted strings (' doubled) in the
-- script, which builds wsl.exe's command line for CommandLineToArgvW itself.
local schedule = require "lib.schedule"

local windows = { name = "windows", script = "bkr-task.ps1", task_folder = "\\bkr\\" }

-- ------------------------------------------------------------------ quoting

function windows.xml_escape(text)
  return (text:gsub("[&<>\"']", {
    ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&apos;",
  }))
end

-- A PowerShell string literal that expands nothing: '...' with ' doubled. PowerShell also
-- takes the typographic quotes (U+2018, U+2019, U+201A, U+201B) as quote marks: doubled too.
function windows.ps_quote(text)
  local escaped = text:gsub("'", "''"):gsub("\u{2018}", "\u{2018}\u{2018}"):gsub("\u{2019}", "\u{2019}\u{2019}")
    :gsub("\u{201A}", "\u{201A}\u{201A}"):gsub("\u{201B}", "\u{201B}\u{201B}")
  return "'" .. escaped .. "'"
end

-- The Windows name of a WSL path under /mnt/X/ (as wslpath -w gives it with the default
-- automount root): /mnt/c/bkr -> C:\bkr. nil for any other path.
function windows.windows_path(path)
  local drive, rest = path:match("^/mnt/(%a)(.*)$")
  if not drive or (rest ~= "" and rest:sub(1, 1) ~= "/") then return nil end
  rest = rest:gsub("/+$", ""):gsub("/+", "\\")
  return drive:upper() .. ":" .. (rest == "" and "\\" or rest)
end

-- A folder name Task Scheduler's Exec arguments can carry in double quotes: a drive, no
-- quote, no % (Task Scheduler expands %VARIABLES% there), no control character.
function windows.valid_folder(name)
  return name:match("^%a:\\") ~= nil and not name:find('["%%<>|?*%c]') and not name:find(":", 3, true)
    and utf8.len(name) ~= nil
end

-- ------------------------------------------------------------------ the task files

local HEADER_XML = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- " .. schedule.MARKER .. " -->\n"

local function script_path(plan)
  local folder = plan.windows_dir:gsub("\\$", "")
  return folder .. "\\" .. windows.script
end

local function trigger(plan, job)
  local lines = {
    "    <CalendarTrigger>",
    -- a date in the past: the trigger fires from then on, at this local time of day
    string.format("      <StartBoundary>2024-01-01T%02d:%02d:00</StartBoundary>", job.at.hour, job.at.minute),
    "      <Enabled>true</Enabled>",
  }
  local delay = plan.schedule.randomized_delay_seconds
  if delay and delay > 0 then lines[#lines + 1] = "      <RandomDelay>PT" .. delay .. "S</RandomDelay>" end
  if job.days == "daily" then
    lines[#lines + 1] = "      <ScheduleByDay>"
    lines[#lines + 1] = "        <DaysInterval>1</DaysInterval>"
    lines[#lines + 1] = "      </ScheduleByDay>"
  else
    lines[#lines + 1] = "      <ScheduleByWeek>"
    lines[#lines + 1] = "        <DaysOfWeek>"
    for _, key in ipairs(job.days) do
      for _, day in ipairs(schedule.DAYS) do
        if day.key == key then lines[#lines + 1] = "          <" .. day.long .. " />" end
      end
    end
    lines[#lines + 1] = "        </DaysOfWeek>"
    lines[#lines + 1] = "        <WeeksInterval>1</WeeksInterval>"
    lines[#lines + 1] = "      </ScheduleByWeek>"
  end
  lines[#lines + 1] = "    </CalendarTrigger>"
  return table.concat(lines, "\n")
end

local function task_xml(plan, job)
  local script = script_path(plan)
  local arguments = "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File \"" .. script .. "\" -Job " .. job.name
  return HEADER_XML .. table.concat({
    '<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">',
    "  <RegistrationInfo>",
    "    <Author>bkr</Author>",
    "    <Description>" .. windows.xml_escape("bkr job " .. job.name .. ", " .. schedule.days_text(job.days)
      .. " at " .. schedule.time_text(job.at) .. ": runs " .. windows.script .. " -Job " .. job.name
      .. " (docs/schedule.md)") .. "</Description>",
    "    <URI>" .. windows.xml_escape(windows.task_folder .. "bkr-" .. job.name) .. "</URI>",
    "  </RegistrationInfo>",
    "  <Triggers>",
    trigger(plan, job),
    "  </Triggers>",
    "  <Principals>",
    -- the account is given at registration (-Register asks for it): the one that owns the
    -- WSL distribution; "Password" runs the task whether or not that user is logged on
    '    <Principal id="Author">',
    "      <LogonType>Password</LogonType>",
    "      <RunLevel>LeastPrivilege</RunLevel>",
    "    </Principal>",
    "  </Principals>",
    "  <Settings>",
    "    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>",
    "    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>",
    "    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>",
    "    <AllowHardTerminate>true</AllowHardTerminate>",
    -- a run missed while the machine was off starts when it is back (systemd's Persistent=)
    "    <StartWhenAvailable>true</StartWhenAvailable>",
    "    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>",
    "    <AllowStartOnDemand>true</AllowStartOnDemand>",
    "    <Enabled>true</Enabled>",
    "    <Hidden>false</Hidden>",
    "    <RunOnlyIfIdle>false</RunOnlyIfIdle>",
    "    <WakeToRun>false</WakeToRun>",
    "    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>",
    "  </Settings>",
    '  <Actions Context="Author">',
    "    <Exec>",
    "      <Command>powershell.exe</Command>",
    "      <Arguments>" .. windows.xml_escape(arguments) .. "</Arguments>",
    "      <WorkingDirectory>" .. windows.xml_escape(plan.windows_dir) .. "</WorkingDirectory>",
    "    </Exec>",
    "  </Actions>",
    "</Task>",
  }, "\n") .. "\n"
end

-- ------------------------------------------------------------------ the e-mail settings

-- The failure e-mail the script sends when WSL cannot run a job: the first e-mail channel of
-- `notify:` that takes failures (docs/notify.md; lib/notify.lua validates the section), read
-- defensively here, or nil. A password on the Linux side (a file, a variable) is not there on
-- Windows: the script reads the variable smtp.password_env names, else BKR_SMTP_PASSWORD.
function windows.failure_mail(cfg)
  local section = type(cfg.notify) == "table" and cfg.notify or nil
  local channels = section and (section.channels or (section[1] and section)) or {}
  for _, channel in ipairs(channels) do
    local takes_failures = channel.on == nil
    for _, event in ipairs(type(channel.on) == "table" and channel.on or {}) do
      if event == "failure" then takes_failures = true end
    end
    local smtp = type(channel.smtp) == "table" and channel.smtp or {}
    local to = type(channel.to) == "table" and channel.to or { channel.to }
    if channel.type == "email" and takes_failures and type(smtp.host) == "string"
      and type(channel.from) == "string" and #to > 0 then
      local security = smtp.security or "starttls"
      return {
        host = smtp.host,
        port = math.tointeger(smtp.port) or ({ starttls = 587, tls = 465, none = 25 })[security] or 587,
        security = security,
        from = channel.from,
        to = to,
        user = smtp.user,
        password_variable = smtp.user and (smtp.password_env or "BKR_SMTP_PASSWORD") or nil,
      }
    end
  end
  return nil
end

-- ------------------------------------------------------------------ the script

local function ps_list(words)
  local quoted = {}
  for i, word in ipairs(words) do quoted[i] = windows.ps_quote(word) end
  return "@(" .. table.concat(quoted, ", ") .. ")"
end

local function ps_value(value)
  if value == nil then return "$null" end
  if math.type(value) == "integer" then return tostring(value) end
  if type(value) == "table" then return ps_list(value) end
  return windows.ps_quote(value)
end

-- What runs inside WSL for a job: /usr/bin/env sets the job's variables, then bkr's argv.
local function wsl_argv(plan, job)
  local argv = { "/usr/bin/env" }
  for _, pair in ipairs(schedule.environment(job, plan)) do argv[#argv + 1] = pair[1] .. "=" .. pair[2] end
  for _, word in ipairs(schedule.command(job, plan)) do argv[#argv + 1] = word end
  return argv
end

local function settings_block(plan)
  local lines = {
    "$Distribution = " .. windows.ps_quote(plan.schedule.distribution),
    "$LinuxUser = " .. windows.ps_quote(plan.schedule.user),
    "$TaskFolder = " .. windows.ps_quote(windows.task_folder),
    "$EventSource = 'bkr'",
    "$LogFile = Join-Path $PSScriptRoot 'bkr-task.log'",
    "",
    "# Each job: what runs inside WSL, word by word (wsl.exe --exec: no Linux shell).",
    "$Jobs = [ordered]@{",
  }
  for _, job in ipairs(plan.schedule.jobs) do
    lines[#lines + 1] = "    " .. windows.ps_quote(job.name) .. " = " .. ps_list(wsl_argv(plan, job))
  end
  lines[#lines + 1] = "}"
  lines[#lines + 1] = ""
  local mail = windows.failure_mail(plan.cfg)
  if mail then
    lines[#lines + 1] = "# The failure e-mail, from the configuration's notify: e-mail channel. No password here:"
    lines[#lines + 1] = "# it is read from the environment variable PasswordVariable names (docs/schedule.md)."
    lines[#lines + 1] = "$Mail = @{"
    for _, pair in ipairs({
      { "Host", mail.host }, { "Port", mail.port }, { "Security", mail.security }, { "From", mail.from },
      { "To", mail.to }, { "UserName", mail.user }, { "PasswordVariable", mail.password_variable },
    }) do
      lines[#lines + 1] = "    " .. pair[1] .. " = " .. ps_value(pair[2])
    end
    lines[#lines + 1] = "}"
  else
    lines[#lines + 1] = "# No failure e-mail: the configuration has no notify: e-mail channel for failures."
    lines[#lines + 1] = "$Mail = $null"
  end
  return table.concat(lines, "\n")
end

-- The fixed part of the script: PowerShell 5.1 (powershell.exe), as every Windows has it.
local SCRIPT_BODY = [==[
# bkr's own exit codes (docs/runtime.md). Any other means bkr did not run: wsl.exe failed
# (-1), the distribution or the user is missing, /usr/bin/env found no bkr (127)...
$BkrExitCodes = @(0, 1, 2, 3, 130, 143)

function Write-Log([string]$Text) {
    $line = '{0} {1}' -f (Get-Date -Format 'yyyy-MM-ddTHH:mm:sszzz'), $Text
    try {
        Add-Content -LiteralPath $LogFile -Value $line -Encoding UTF8
    } catch {
        Write-Warning ('cannot write ' + $LogFile + ': ' + $_.Exception.Message)
    }
}

function Write-Event([string]$Text, [int]$Id, [string]$Type) {
    try {
        Write-EventLog -LogName Application -Source $EventSource -EventId $Id -EntryType $Type -Message $Text
    } catch {
        Write-Log ('event log: ' + $_.Exception.Message + ' (run -Register as an administrator once)')
    }
}

# One argument as CommandLineToArgvW reads it back, which is how wsl.exe --exec splits its
# command line: in double quotes, a quote as \", backslashes before a quote or the end doubled.
function ConvertTo-Argument([string]$Word) {
    $quoted = $Word -replace '(\\*)"', '$1$1\"'
    $quoted = $quoted -replace '(\\+)$', '$1$1'
    return '"' + $quoted + '"'
}

# The last lines of a job's output, for the event log and the e-mail.
function Get-Tail([string]$Text) {
    if ($Text.Length -le 4000) { return $Text }
    return '...' + $Text.Substring($Text.Length - 4000)
}

function Send-FailureMail([string]$Subject, [string]$Body) {
    if ($null -eq $Mail) {
        Write-Log 'no failure e-mail configured (notify: e-mail channel)'
        return
    }
    if ($Mail.Security -eq 'tls') {
        Write-Log 'e-mail not sent: Windows PowerShell cannot send with implicit TLS (security: tls, port 465); use starttls'
        return
    }
    $client = New-Object System.Net.Mail.SmtpClient($Mail.Host, $Mail.Port)
    $message = New-Object System.Net.Mail.MailMessage
    try {
        if ($Mail.Security -eq 'starttls') {
            [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
            $client.EnableSsl = $true
        }
        if ($Mail.UserName) {
            $password = [Environment]::GetEnvironmentVariable($Mail.PasswordVariable)
            if (-not $password) {
                Write-Log ('e-mail not sent: the environment variable ' + $Mail.PasswordVariable + ' is not set for this account')
                return
            }
            $client.Credentials = New-Object System.Net.NetworkCredential($Mail.UserName, $password)
        }
        $message.From = New-Object System.Net.Mail.MailAddress($Mail.From)
        foreach ($address in $Mail.To) { $message.To.Add($address) }
        $message.Subject = $Subject
        $message.Body = $Body
        $client.Send($message)
        Write-Log ('e-mail sent to ' + ($Mail.To -join ', '))
    } catch {
        Write-Log ('e-mail not sent: ' + $_.Exception.Message)
    } finally {
        $message.Dispose()
        $client.Dispose()
    }
}

function Invoke-Job([string]$Name) {
    if (-not $Jobs.Contains($Name)) {
        Write-Log ('unknown job ' + $Name + ': not in this script')
        Write-Event ('bkr job ' + $Name + ' is not in ' + $PSCommandPath) 3 'Error'
        return 2
    }
    $words = @('-d', $Distribution, '-u', $LinuxUser, '--exec') + $Jobs[$Name]
    Write-Log ('job ' + $Name + ' started')
    $code = $null
    $output = ''
    try {
        $info = New-Object System.Diagnostics.ProcessStartInfo
        $info.FileName = 'wsl.exe'
        $info.Arguments = (($words | ForEach-Object { ConvertTo-Argument $_ }) -join ' ')
        $info.UseShellExecute = $false
        $info.CreateNoWindow = $true
        $info.RedirectStandardOutput = $true
        $info.RedirectStandardError = $true
        $info.StandardOutputEncoding = [System.Text.Encoding]::UTF8
        $info.StandardErrorEncoding = [System.Text.Encoding]::UTF8
        # wsl.exe's own messages in UTF-8 too (else UTF-16)
        $info.EnvironmentVariables['WSL_UTF8'] = '1'
        $process = [System.Diagnostics.Process]::Start($info)
        $stdout = $process.StandardOutput.ReadToEndAsync()
        $stderr = $process.StandardError.ReadToEndAsync()
        $process.WaitForExit()
        $code = $process.ExitCode
        $output = $stdout.Result + $stderr.Result
    } catch {
        $output = 'wsl.exe could not be started: ' + $_.Exception.Message
    }
    if ($output) { Write-Log ($Name + ' output:' + [Environment]::NewLine + $output.TrimEnd()) }
    $tail = Get-Tail $output
    if ($null -ne $code -and $BkrExitCodes -contains $code) {
        if ($code -eq 0) {
            Write-Log ('job ' + $Name + ' ok')
            Write-Event ('bkr job ' + $Name + ' ok') 1 'Information'
        } else {
            # bkr ran and failed: its own notification (notify:) tells a person
            Write-Log ('job ' + $Name + ' failed, exit ' + $code)
            Write-Event ('bkr job ' + $Name + ' failed, exit ' + $code + [Environment]::NewLine + $tail) 2 'Error'
        }
        return $code
    }
    # bkr did not run at all, so no notification of its own can go out: send it from here
    $what = 'bkr job ' + $Name + ' could not run (wsl.exe exit ' + $code + ') on ' + $env:COMPUTERNAME
    Write-Log $what
    Write-Event ($what + [Environment]::NewLine + $tail) 3 'Error'
    Send-FailureMail $what ($what + [Environment]::NewLine + [Environment]::NewLine + $tail + [Environment]::NewLine + 'Log: ' + $LogFile)
    if ($null -eq $code) { return 1 }
    return $code
}

function Assert-Administrator {
    $identity = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()
    if (-not $identity.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'run this from a PowerShell started as an administrator'
    }
}

function Register-Jobs([string]$Account) {
    Assert-Administrator
    if (-not [System.Diagnostics.EventLog]::SourceExists($EventSource)) {
        New-EventLog -LogName Application -Source $EventSource
    }
    if (-not $Account) { $Account = $env:USERDOMAIN + '\' + $env:USERNAME }
    $credential = Get-Credential -UserName $Account -Message 'The Windows account the bkr tasks run as: the one that owns the WSL distribution'
    if ($null -eq $credential) { throw 'no account given' }
    $password = $credential.GetNetworkCredential().Password
    foreach ($name in $Jobs.Keys) {
        $file = Join-Path $PSScriptRoot ('bkr-' + $name + '.xml')
        $xml = Get-Content -LiteralPath $file -Raw -Encoding UTF8
        Register-ScheduledTask -Xml $xml -TaskName ('bkr-' + $name) -TaskPath $TaskFolder -User $credential.UserName -Password $password -Force | Out-Null
        Write-Output ('registered ' + $TaskFolder + 'bkr-' + $name)
    }
    # tasks of jobs no longer in the schedule (the folder is bkr's own)
    foreach ($task in @(Get-ScheduledTask -TaskPath $TaskFolder -ErrorAction SilentlyContinue)) {
        if ($task.TaskName -like 'bkr-*' -and -not $Jobs.Contains($task.TaskName.Substring(4))) {
            Unregister-ScheduledTask -TaskName $task.TaskName -TaskPath $TaskFolder -Confirm:$false
            Write-Output ('unregistered ' + $TaskFolder + $task.TaskName + ': no longer in the schedule')
        }
    }
}

function Unregister-Jobs {
    Assert-Administrator
    foreach ($task in @(Get-ScheduledTask -TaskPath $TaskFolder -ErrorAction SilentlyContinue)) {
        if ($task.TaskName -like 'bkr-*') {
            Unregister-ScheduledTask -TaskName $task.TaskName -TaskPath $TaskFolder -Confirm:$false
            Write-Output ('unregistered ' + $TaskFolder + $task.TaskName)
        }
    }
}

if ($Register -and -not $Unregister -and -not $Job) {
    Register-Jobs $User
    exit 0
}
if ($Unregister -and -not $Register -and -not $Job) {
    Unregister-Jobs
    exit 0
}
if ($Job -and -not $Register -and -not $Unregister) {
    # the last value only: a function returns whatever its statements left in the pipeline
    $status = @(Invoke-Job $Job)
    exit ([int]$status[-1])
}
Write-Output 'usage: bkr-task.ps1 -Register [-User DOMAIN\NAME] | -Unregister | -Job NAME'
exit 2
]==]

local function script(plan)
  return table.concat({
    "# " .. schedule.MARKER,
    "# bkr-task.ps1: the bkr jobs as Windows scheduled tasks, bkr running inside WSL (docs/schedule.md).",
    "#   -Register [-User DOMAIN\\NAME]  register a task per bkr-JOB.xml beside this script (as an administrator)",
    "#   -Unregister                    remove every task in the \\bkr\\ folder (as an administrator)",
    "#   -Job NAME                      run one job: what each task does",
    "# Outcomes go to the Application event log (source bkr) and to bkr-task.log beside this script.",
    "param(",
    "    [string]$Job,",
    "    [switch]$Register,",
    "    [switch]$Unregister,",
    "    [string]$User",
    ")",
    "",
    "Set-StrictMode -Version 2.0",
    "$ErrorActionPreference = 'Stop'",
    "",
    settings_block(plan),
    "",
    SCRIPT_BODY,
  }, "\n")
end

-- The files install writes. The script starts with a UTF-8 byte order mark: without one,
-- Windows PowerShell reads a script in the ANSI code page and mangles non-ASCII arguments.
function windows.files(plan)
  local files = {}
  for _, job in ipairs(plan.schedule.jobs) do
    files[#files + 1] = { name = "bkr-" .. job.name .. ".xml", content = task_xml(plan, job), mode = "0644" }
  end
  files[#files + 1] = { name = windows.script, content = "\u{FEFF}" .. script(plan), mode = "0644" }
  return files
end

function windows.same_kind(name)
  return name:match("^bkr%-.+%.xml$") ~= nil
end

-- Nothing to run on Linux: the admin registers the tasks from Windows.
function windows.after_install() return {} end
function windows.before_remove() return {} end
function windows.after_remove() return {} end

return windows
