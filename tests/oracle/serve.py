"""One Python process that runs the oracle calls of one test binary (tests/common/mod.rs,
`oracle` and `oracle_code`), so that torch is imported once per binary, not once per call:
an import costs about 3 s of CPU, and the suite used to start Python about 70 times.

Reads one JSON request a line on stdin, either
  {"script": PATH, "args": [...], "stdin": TEXT}   runs the script as `python PATH ARGS...`
                                                   would: a fresh namespace named __main__,
                                                   its directory first on sys.path
  {"code": TEXT, "args": [...], "stdin": TEXT}     runs the code as `python -c TEXT ARGS...`
with sys.argv, sys.stdin (TEXT), sys.stdout and sys.stderr replaced for the call, and writes
one JSON reply a line: {"ok": bool, "stdout": TEXT, "stderr": TEXT, "error": TEXT or null}
(`error`: the traceback, or the message of a SystemExit with a non-zero code). The scripts
seed every generator they draw from, so a call gives what a fresh process gives.

The replies go to a copy of the original stdout; file descriptor 1 itself is pointed at
stderr, so that output from C++ cannot break a reply. Exits at the end of its stdin: when
the test binary exits.
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback


def call(request):
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, sys.stdin, sys.path[:]
    script = request.get("script")
    sys.argv = [script or "-c", *request["args"]]
    sys.stdin = io.StringIO(request.get("stdin", ""))
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)) if script else "")
    ok, error = True, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if script:
                runpy.run_path(script, run_name="__main__")
            else:
                exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        if e.code not in (None, 0):
            ok, error = False, str(e.code)
    except BaseException:  # noqa: B036 - every failure is a reply, not the end of the server
        ok, error = False, traceback.format_exc()
    finally:
        sys.argv, sys.stdin, sys.path[:] = saved[0], saved[1], saved[2]
    return {"ok": ok, "stdout": out.getvalue(), "stderr": err.getvalue(), "error": error}


def main():
    requests = sys.stdin
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in requests:
        replies.write(json.dumps(call(json.loads(line))) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
