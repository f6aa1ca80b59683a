#!/usr/bin/python3
"""schedule_check.py: read bkr's generated scheduler entries back as each scheduler would,
independently of the Lua that wrote them (tests/schedule_spec.lua). Prints JSON.

  schedule_check.py cron FILE BASE [--user]   each entry line of a cron file: its five time
      fields parsed by croniter (Debian's python3-croniter) with the next 14 times after BASE
      (YYYY-mm-ddTHH:MM), the user field, and the command as cron hands it to /bin/sh: cron's
      % processing applied (an unescaped % ends the command, \\% is a plain %)
  schedule_check.py run-cron COMMAND          run one such command with /bin/sh -c, as cron does
  schedule_check.py unit FILE                 a unit file's settings; ExecStart= and Environment=
      read by the rules of systemd.syntax(7)/systemd.service(5): specifiers (%%), quotes and C
      escapes, then $$ in the arguments
  schedule_check.py task FILE                 what Task Scheduler reads from a task XML file
"""
import datetime
import json
import subprocess
import sys
import xml.etree.ElementTree as ET


def cron_command(text):
    """What cron (vixie cron's do_command.c) makes of a command field: the command for
    /bin/sh and the text after the first unescaped %, which becomes its stdin."""
    out = []
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
            if ch == '%':
                out[-1] = '%'  # \% -> %
                continue
            out.append(ch)
            continue
        if ch == '\\':
            escaped = True
            out.append(ch)
            continue
        if ch == '%':
            return ''.join(out), text[i + 1:].replace('%', '\n')
        out.append(ch)
    return ''.join(out), None


def cron(path, base, with_user):
    from croniter import croniter
    start = datetime.datetime.strptime(base, '%Y-%m-%dT%H:%M')
    entries = []
    for number, line in enumerate(open(path, encoding='utf-8').read().split('\n'), 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        head = line.split(None, 1)[0]
        if '=' in head and not head[0].isdigit() and head[0] != '*':
            entries.append({'line': number, 'variable': line})
            continue
        parts = line.split(None, 6 if with_user else 5)
        fields = ' '.join(parts[:5])
        if not croniter.is_valid(fields):
            entries.append({'line': number, 'error': 'invalid time fields: ' + fields})
            continue
        it = croniter(fields, start)
        times = [it.get_next(datetime.datetime).strftime('%a %H:%M') for _ in range(14)]
        command, stdin = cron_command(parts[6] if with_user else parts[5])
        entries.append({'line': number, 'fields': fields, 'next': times,
                        'user': parts[5] if with_user else None, 'command': command, 'stdin': stdin})
    print(json.dumps(entries))


def run_cron(command):
    done = subprocess.run(['/bin/sh', '-c', command], capture_output=True, text=True)
    print(json.dumps({'code': done.returncode, 'stdout': done.stdout, 'stderr': done.stderr}))


ESCAPES = {'\\': '\\', '"': '"', "'": "'", 'n': '\n', 't': '\t', 's': ' '}


def systemd_words(value):
    """extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE) over a whole value."""
    words, i, n = [], 0, len(value)
    while True:
        while i < n and value[i] in ' \t':
            i += 1
        if i >= n:
            return words
        word, quote = [], None
        while i < n:
            ch = value[i]
            if quote is None and ch in ' \t':
                break
            if ch == '\\':
                nxt = value[i + 1] if i + 1 < n else ''
                if nxt not in ESCAPES:
                    raise ValueError('unexpected escape \\' + nxt)
                word.append(ESCAPES[nxt])
                i += 2
                continue
            if quote is None and ch in '"\'':
                quote = ch
            elif ch == quote:
                quote = None
            else:
                word.append(ch)
            i += 1
        if quote is not None:
            raise ValueError('unbalanced quote')
        words.append(''.join(word))


def specifiers(value):
    """%% is a percent sign; any other specifier would be expanded: refuse it here."""
    out, i = [], 0
    while i < len(value):
        if value[i] == '%':
            if value[i + 1:i + 2] != '%':
                raise ValueError('specifier %' + value[i + 1:i + 2])
            out.append('%')
            i += 2
            continue
        out.append(value[i])
        i += 1
    return ''.join(out)


def variables(word):
    """$$ is a dollar sign; $NAME or ${NAME} would be substituted: refuse it here."""
    out, i = [], 0
    while i < len(word):
        if word[i] == '$':
            if word[i + 1:i + 2] == '$':
                out.append('$')
                i += 2
                continue
            if word[i + 1:i + 2] == '{' or word[i + 1:i + 2].isalpha() or word[i + 1:i + 2] == '_':
                raise ValueError('variable at ' + word[i:])
        out.append(word[i])
        i += 1
    return ''.join(out)


def unit(path):
    settings = {}
    for line in open(path, encoding='utf-8').read().split('\n'):
        if not line or line.startswith('#') or line.startswith('['):
            continue
        key, _, value = line.partition('=')
        settings.setdefault(key, []).append(value)
    result = {'settings': settings}
    try:
        if 'ExecStart' in settings:
            words = systemd_words(specifiers(settings['ExecStart'][0]))
            result['exec'] = [words[0]] + [variables(w) for w in words[1:]]
        env = {}
        for value in settings.get('Environment', []):
            for word in systemd_words(specifiers(value)):
                name, _, val = word.partition('=')
                env[name] = val
        result['environment'] = env
    except ValueError as err:
        result['error'] = str(err)
    print(json.dumps(result))


NS = {'t': 'http://schemas.microsoft.com/windows/2004/02/mit/task'}


def task(path):
    root = ET.parse(path).getroot()

    def text(xpath):
        node = root.find(xpath, NS)
        return node.text if node is not None else None
    trigger = root.find('t:Triggers/t:CalendarTrigger', NS)
    days = None
    if trigger is not None and trigger.find('t:ScheduleByWeek', NS) is not None:
        days = [d.tag.split('}')[1] for d in trigger.find('t:ScheduleByWeek/t:DaysOfWeek', NS)]
    print(json.dumps({
        'tag': root.tag, 'version': root.get('version'),
        'uri': text('t:RegistrationInfo/t:URI'),
        'start': text('t:Triggers/t:CalendarTrigger/t:StartBoundary'),
        'random_delay': text('t:Triggers/t:CalendarTrigger/t:RandomDelay'),
        'days_interval': text('t:Triggers/t:CalendarTrigger/t:ScheduleByDay/t:DaysInterval'),
        'weeks_interval': text('t:Triggers/t:CalendarTrigger/t:ScheduleByWeek/t:WeeksInterval'),
        'days': days,
        'logon_type': text('t:Principals/t:Principal/t:LogonType'),
        'start_when_available': text('t:Settings/t:StartWhenAvailable'),
        'multiple_instances': text('t:Settings/t:MultipleInstancesPolicy'),
        'enabled': text('t:Settings/t:Enabled'),
        'command': text('t:Actions/t:Exec/t:Command'),
        'arguments': text('t:Actions/t:Exec/t:Arguments'),
        'working_directory': text('t:Actions/t:Exec/t:WorkingDirectory'),
    }))


if __name__ == '__main__':
    what = sys.argv[1]
    if what == 'cron':
        cron(sys.argv[2], sys.argv[3], '--user' in sys.argv[4:])
    elif what == 'run-cron':
        run_cron(sys.argv[2])
    elif what == 'unit':
        unit(sys.argv[2])
    elif what == 'task':
        task(sys.argv[2])
    else:
        sys.exit('unknown check ' + what)
