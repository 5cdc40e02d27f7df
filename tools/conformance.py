#!/usr/bin/env python3
"""Run CPython's own test_asyncio loop mixins against an event loop.

    python3 tools/conformance.py                      # qloop:new_event_loop
    python3 tools/conformance.py --loop asyncio:new_event_loop
    python3 tools/conformance.py -k sendfile --list

Each mixin below is composed with a loop factory the way CPython composes it
into its own concrete classes (EPollEventLoopTests, SelectorStartTLSTests,
...), and every test runs in its own worker process with a timeout, so a
hang or a crash is one failed test, not a dead run.  The interpreter running
this script is the one whose `test.test_asyncio` is used.

Known failures live in tools/conformance/expected-<loop>-<X.Y>.txt, one test
id per line followed by `# reason`; see tools/conformance/README.md.  The last
line printed is `conformance: N passed, N failed[, N skipped]`, where "failed"
counts what was not expected: new failures, unexpected passes, and entries
whose reason is still a TODO placeholder.  Exit status: 0 when that is zero,
1 when not, 2 on a usage error or a loop that cannot even be created.
"""

import argparse
import collections
import concurrent.futures
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SCRIPT = os.path.abspath(__file__)
HERE = os.path.dirname(SCRIPT)
ROOT = os.path.dirname(HERE)
EXPECTATIONS_DIR = os.path.join(HERE, "conformance")
PYVER = "%d.%d" % sys.version_info[:2]

TODO_REASON = "TODO: reason"
FAILING = ("fail", "error", "timeout", "crash")
OUTCOMES = ("pass",) + FAILING + ("skip",)
# Unexpected failures are re-run this many at most; above that the loop is
# broken anyway and re-running would only double the time.
RETRY_CAP = 10
LOG_LIMIT = 64 * 1024  # bytes kept of each of a worker's stdout and stderr

# (module in test.test_asyncio, mixin, name of our concrete class, how
# CPython's concrete classes build it):
#   "events"     (UnixEventLoopTestsMixin, SubprocessTestsMixin,
#                 test_utils.TestCase) + create_event_loop(), as
#                 EPollEventLoopTests; the two groups share that class and
#                 each runs only the tests its own mixin defines
#   "loop"       (mixin, test_utils.TestCase) + create_event_loop()
#   "functional" (mixin, unittest.TestCase) + new_loop()
GROUPS = (
    ("test_events", "EventLoopTestsMixin", "EventLoopTests", "events"),
    ("test_events", "SubprocessTestsMixin", "SubprocessTests", "events"),
    ("test_sock_lowlevel", "BaseSockTestsMixin", "SockTests", "loop"),
    ("test_sendfile", "SendfileTestsBase", "SendfileTests", "loop"),
    ("test_buffered_proto", "BaseTestBufferedProtocol",
     "BufferedProtocolTests", "functional"),
    ("test_server", "BaseStartServer", "StartServerTests", "functional"),
    ("test_sslproto", "BaseStartTLS", "StartTLSTests", "functional"),
)


def tearDownModule():
    # What every one of the CPython modules above does.
    import asyncio
    asyncio.set_event_loop_policy(None)


# --- building the test classes (parent and worker) -------------------------

def load_factory(spec):
    """'module:callable' (callable may be dotted) -> the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("--loop wants module:callable, got %r" % spec)
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError("%s is not callable" % spec)
    return obj


def loop_name(spec):
    return spec.partition(":")[0].split(".")[0]


def group_id(group):
    return "%s.%s" % (group[0], group[1])


class _NoDefaultExecutor:
    """A loop seen through a proxy that has `_default_executor = None`.

    CPython's test_utils.TestCase.close_loop() reads the private
    `loop._default_executor` of asyncio's own loop; a loop without it (uvloop
    has none) would fail every test in its cleanup.  Its executor is shut
    down through the public API instead, and the rest of close_loop() (close,
    join the child watcher's threads) runs unchanged through this proxy.
    """

    _default_executor = None

    def __init__(self, loop):
        self._loop = loop

    def __getattr__(self, name):
        return getattr(self._loop, name)


def loop_test_case():
    from test.test_asyncio import utils as test_utils

    class LoopTestCase(test_utils.TestCase):
        @staticmethod
        def close_loop(loop):
            if not hasattr(loop, "_default_executor"):
                if not loop.is_closed():
                    loop.run_until_complete(loop.shutdown_default_executor())
                loop = _NoDefaultExecutor(loop)
            test_utils.TestCase.close_loop(loop)

    return LoopTestCase


def build_class(group, factory):
    import unittest
    module_name, mixin_name, class_name, kind = group
    module = importlib.import_module("test.test_asyncio." + module_name)
    mixin = getattr(module, mixin_name)

    def make_loop(self):
        return factory()

    if kind == "events":
        # On POSIX every concrete class of test_events is
        # (UnixEventLoopTestsMixin, SubprocessTestsMixin, TestCase): the Unix
        # mixin installs a SafeChildWatcher attached to the loop.  It is gone
        # on Windows (and in 3.14), where EventLoopTestsMixin stands alone.
        first = getattr(module, "UnixEventLoopTestsMixin",
                        module.EventLoopTestsMixin)
        bases = (first, module.SubprocessTestsMixin, loop_test_case())
        attrs = {"create_event_loop": make_loop}
    elif kind == "loop":
        bases = (mixin, loop_test_case())
        attrs = {"create_event_loop": make_loop}
    else:
        bases = (mixin, unittest.TestCase)
        attrs = {"new_loop": make_loop}
    attrs["__module__"] = __name__
    attrs["__qualname__"] = class_name
    cls = type(class_name, bases, attrs)
    names = [n for n in unittest.TestLoader().getTestCaseNames(cls)
             if any(n in vars(k) for k in mixin.__mro__)]
    return cls, names


def enumerate_tests():
    """[(test_id, group)] in group order; ids are module.Mixin.test_name."""
    def no_loop():
        raise AssertionError("enumeration does not create loops")

    tests = []
    for group in GROUPS:
        _, names = build_class(group, no_loop)
        tests.extend(("%s.%s" % (group_id(group), n), group) for n in names)
    return tests


def find_group(test_id):
    gid, _, name = test_id.rpartition(".")
    for group in GROUPS:
        if group_id(group) == gid:
            return group, name
    raise ValueError("not a conformance test id: %r" % test_id)


# --- worker: one test in this process --------------------------------------

def worker_main(args):
    import faulthandler
    import unittest

    faulthandler.enable()
    if args.timeout > 2:
        # A hung test leaves its stack in the log just before it is killed.
        faulthandler.dump_traceback_later(
            max(args.timeout - 3, args.timeout * 0.9), exit=False)
    group, name = find_group(args.worker)
    cls, _ = build_class(group, load_factory(args.loop))
    # The class must be reachable from this module for unittest's module
    # fixtures (tearDownModule) and for readable ids in the log.
    globals()[cls.__name__] = cls
    suite = unittest.TestSuite([cls(name)])
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2)
    t0 = time.monotonic()
    result = runner.run(suite)
    test_time = time.monotonic() - t0
    faulthandler.cancel_dump_traceback_later()

    if result.errors:
        outcome, detail = "error", last_line(result.errors[0][1])
    elif result.failures:
        outcome, detail = "fail", last_line(result.failures[0][1])
    elif result.unexpectedSuccesses:
        outcome, detail = "fail", "unexpected success (@expectedFailure)"
    elif result.skipped:
        outcome, detail = "skip", result.skipped[0][1]
    elif result.testsRun == 1:
        # An @expectedFailure that failed is CPython's own known failure.
        outcome, detail = "pass", ""
    else:
        outcome, detail = "error", "test did not run"
    with open(args.result, "w") as f:
        json.dump({"outcome": outcome, "detail": detail,
                   "test_time": round(test_time, 3)}, f)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1].strip()[:300] if lines else ""


def probe_main(args):
    """Create and close one loop: is the factory usable at all?"""
    loop = load_factory(args.loop)()
    print("%s.%s" % (type(loop).__module__, type(loop).__qualname__))
    loop.close()
    return 0


# --- expectations -----------------------------------------------------------

class ExpectationError(Exception):
    pass


def expectations_path(args):
    if args.expectations:
        return args.expectations
    return os.path.join(EXPECTATIONS_DIR, "expected-%s-%s.txt"
                        % (loop_name(args.loop), PYVER))


def read_expectations(path, lenient=False):
    """-> (header lines, {test_id: reason}); lenient turns a missing reason
    into the TODO placeholder instead of an error."""
    header, entries = [], {}
    if not os.path.exists(path):
        return header, entries
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                if not entries:
                    header.append(raw.rstrip("\n"))
                continue
            test_id, sep, reason = line.partition("#")
            test_id, reason = test_id.strip(), reason.strip()
            where = "%s:%d" % (path, lineno)
            if not test_id or len(test_id.split()) != 1:
                raise ExpectationError("%s: not `test_id # reason`: %r"
                                       % (where, line))
            if not reason:
                if not lenient:
                    raise ExpectationError(
                        "%s: %s has no reason; write one after ` # `"
                        % (where, test_id))
                reason = TODO_REASON
            if test_id in entries:
                raise ExpectationError("%s: %s is listed twice"
                                       % (where, test_id))
            entries[test_id] = reason
    return header, entries


def is_todo(reason):
    return reason.upper().startswith("TODO")


def is_flaky(reason):
    """`# flaky: why` lists a test that may fail or pass: either is fine."""
    return reason.upper().startswith("FLAKY")


DEFAULT_HEADER = """\
# Known conformance failures of %(loop)s on Python %(ver)s.
# One test id per line, then ` # ` and why it fails (mandatory).
# A listed test that passes is an error too: delete its line.
# Format and workflow: tools/conformance/README.md"""


def write_expectations(path, header, entries, loop, ver):
    if not header:
        header = (DEFAULT_HEADER % {"loop": loop, "ver": ver}).splitlines()
    while header and not header[-1].strip():
        header.pop()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        for line in header:
            f.write(line + "\n")
        if header:
            f.write("\n")
        for test_id in sorted(entries):
            f.write("%s  # %s\n" % (test_id, entries[test_id]))
    os.replace(path + ".tmp", path)


# --- parent: running the workers --------------------------------------------

class Runner:
    def __init__(self, args, tmp_root, log_dir):
        self.args = args
        self.tmp_root = tmp_root
        self.log_dir = log_dir
        self.lock = threading.Lock()
        self.running = set()
        self.stopping = False
        self.env = worker_env()

    def command(self, *extra):
        return [sys.executable, SCRIPT, "--loop", self.args.loop] + list(extra)

    def spawn(self, cmd, workdir, stdout, stderr):
        env = dict(self.env, TMPDIR=workdir)
        with self.lock:
            if self.stopping:
                raise KeyboardInterrupt
            # Own session: the timeout kills the worker and its children.
            proc = subprocess.Popen(cmd, cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=stderr, start_new_session=True)
            self.running.add(proc)
        return proc

    def finish(self, proc, timeout):
        """Wait up to timeout; kill what is left of the worker's process
        group while its leader is still an unreaped zombie (so the group id
        cannot have been reused); reap.  -> True if it timed out."""
        timed_out = not wait_unreaped(proc, timeout)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        with self.lock:
            self.running.discard(proc)
        return timed_out

    def kill_all(self):
        with self.lock:
            self.stopping = True
            procs = list(self.running)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def probe(self):
        workdir = tempfile.mkdtemp(dir=self.tmp_root)
        proc = self.spawn(self.command("--probe"), workdir,
                          subprocess.PIPE, subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            out += b"\n(timed out)"
        with self.lock:
            self.running.discard(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        text = out.decode("utf-8", "replace").strip()
        if proc.returncode < 0:
            text += "\n(killed by %s)" % signal_name(-proc.returncode)
        elif proc.returncode:
            text += "\n(exit status %d)" % proc.returncode
        return proc.returncode == 0, text

    def run_test(self, test_id, attempt):
        workdir = tempfile.mkdtemp(dir=self.tmp_root)
        cwd = os.path.join(workdir, "cwd")
        os.mkdir(cwd)
        result_path = os.path.join(workdir, "result.json")
        out_path = os.path.join(workdir, "stdout")
        err_path = os.path.join(workdir, "stderr")
        cmd = self.command("--worker", test_id, "--result", result_path,
                           "--timeout", str(self.args.timeout))
        t0 = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = self.spawn(cmd, cwd, out, err)
            timed_out = self.finish(proc, self.args.timeout)
        duration = time.monotonic() - t0
        rc = proc.returncode

        result = None
        if os.path.exists(result_path):
            try:
                with open(result_path) as f:
                    result = json.load(f)
            except ValueError:
                result = None
        if timed_out:
            outcome, detail = "timeout", "killed after %gs" % self.args.timeout
        elif rc < 0:
            outcome, detail = "crash", "killed by %s" % signal_name(-rc)
            if result:
                detail += " after the test (%s)" % result["outcome"]
        elif result is None:
            outcome, detail = "crash", "worker exited %d without a result" % rc
        elif rc != 0:
            outcome, detail = "crash", ("worker exited %d after the test (%s)"
                                        % (rc, result["outcome"]))
        else:
            outcome, detail = result["outcome"], result["detail"]
        record = {"outcome": outcome, "detail": detail,
                  "duration": round(duration, 3),
                  "test_time": result["test_time"] if result else None,
                  "returncode": rc, "log": None}
        if outcome in FAILING:
            record["log"] = self.write_log(test_id, attempt, record, cmd,
                                           out_path, err_path)
        shutil.rmtree(workdir, ignore_errors=True)
        return record

    def write_log(self, test_id, attempt, record, cmd, out_path, err_path):
        name = test_id + (".retry%d" % attempt if attempt else "") + ".log"
        path = os.path.join(self.log_dir, name)
        with open(path, "w", encoding="utf-8", errors="replace") as log:
            log.write("test:     %s\n" % test_id)
            log.write("outcome:  %s (%s)\n" % (record["outcome"],
                                               record["detail"]))
            log.write("duration: %.2fs, exit status %s\n"
                      % (record["duration"], record["returncode"]))
            log.write("command:  %s\n" % " ".join(cmd))
            for title, p in (("stdout", out_path), ("stderr", err_path)):
                log.write("\n----- %s -----\n" % title)
                log.write(read_truncated(p))
        return shown(path)


def wait_unreaped(proc, timeout):
    """Wait for proc to exit without reaping it.  -> False on timeout."""
    deadline = time.monotonic() + timeout
    if not hasattr(os, "waitid"):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    delay = 0.001
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid,
                             os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.02)


def shown(path):
    """A path as the user would type it: relative when under the cwd."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def signal_name(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return "signal %d" % num


def read_truncated(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) > LOG_LIMIT:
        head, tail = data[:LOG_LIMIT // 4], data[-(LOG_LIMIT * 3 // 4):]
        data = (head + b"\n\n[... %d bytes cut ...]\n\n"
                % (len(data) - len(head) - len(tail)) + tail)
    return data.decode("utf-8", "replace")


def worker_env():
    """The environment for workers, whose cwd is a scratch directory: make
    relative PYTHONPATH entries (tools/test passes build/epoll/inplace)
    absolute."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p or ".") for p in
            env["PYTHONPATH"].split(os.pathsep))
    return env


def run_all(runner, tests, jobs, attempt, total_label, progress):
    """Run tests ([(test_id, group)]) in parallel -> {test_id: record}."""
    records = {}
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(runner.run_test, test_id, attempt): test_id
                   for test_id, _ in tests}
        try:
            for fut in concurrent.futures.as_completed(futures):
                test_id = futures[fut]
                records[test_id] = fut.result()
                done += 1
                progress(done, total_label, test_id, records[test_id])
        except BaseException:
            runner.kill_all()
            for fut in futures:
                fut.cancel()
            raise
    return records


# --- parent: verdicts and the report ----------------------------------------

def verdict(record, reason):
    """-> one of ok, skip, expected, new-failure, unexpected-pass, todo."""
    outcome = record["outcome"]
    if reason is not None and is_todo(reason):
        return "todo"
    if outcome == "skip":
        return "skip"
    if outcome == "pass":
        if reason is None or is_flaky(reason):
            return "ok"
        return "unexpected-pass"
    return "expected" if reason is not None else "new-failure"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run CPython's test_asyncio loop mixins against a loop, "
                    "each test in its own process.")
    parser.add_argument("--loop", default="qloop:new_event_loop",
                        metavar="MODULE:CALLABLE",
                        help="loop factory (default %(default)s; "
                             "asyncio:new_event_loop is the reference)")
    parser.add_argument("-k", "--filter", action="append", metavar="REGEX",
                        help="run only test ids matching (re.search); "
                             "repeatable, any match selects")
    parser.add_argument("--list", action="store_true",
                        help="print the selected test ids and exit")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel workers (default: CPUs, %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per test before it counts as a hang "
                             "(default %(default)s)")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-run each new failure up to N times; one "
                             "that then passes is reported as flaky and "
                             "passes (default %%(default)s; at most %d tests "
                             "are re-run)" % RETRY_CAP)
    parser.add_argument("--expectations", metavar="PATH",
                        help="expectations file (default tools/conformance/"
                             "expected-<loop>-<X.Y>.txt)")
    parser.add_argument("--update-expectations", action="store_true",
                        help="rewrite the expectations file from this run: "
                             "new failures are added as `# TODO: reason`, "
                             "passing tests are removed; the run still fails "
                             "until every TODO is replaced by a reason")
    parser.add_argument("--json", metavar="PATH",
                        help="write per-test outcomes and durations here")
    parser.add_argument("--logdir", default=os.path.join("build",
                                                         "conformance-logs"),
                        help="failure logs go to LOGDIR/<loop>-<X.Y>/ "
                             "(default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="progress: print only tests that did not pass")
    parser.add_argument("--worker", metavar="TEST_ID", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return worker_main(args)
    if args.probe:
        return probe_main(args)

    def die(msg):
        print("conformance: error: %s" % msg, file=sys.stderr)
        return 2

    if args.jobs < 1 or args.timeout <= 0 or args.retries < 0:
        return die("-j and --timeout must be positive, --retries >= 0")
    try:
        filters = [re.compile(f) for f in args.filter or ()]
    except re.error as e:
        return die("bad --filter: %s" % e)
    all_tests = enumerate_tests()
    tests = [t for t in all_tests
             if not filters or any(f.search(t[0]) for f in filters)]
    if args.list:
        for test_id, _ in tests:
            print(test_id)
        return 0
    if not tests:
        return die("no test matches the filter")

    exp_path = expectations_path(args)
    try:
        header, expected = read_expectations(
            exp_path, lenient=args.update_expectations)
    except ExpectationError as e:
        return die(str(e))
    all_ids = {t[0] for t in all_tests}
    stale = sorted(set(expected) - all_ids)

    name = loop_name(args.loop)
    log_dir = os.path.join(args.logdir, "%s-%s" % (name, PYVER))
    started = time.monotonic()
    tmp_root = tempfile.mkdtemp(prefix="conformance-")
    runner = Runner(args, tmp_root, log_dir)
    try:
        ok, probe_text = runner.probe()
        if ok:
            os.makedirs(log_dir, exist_ok=True)
            for old in os.listdir(log_dir):
                if old.endswith(".log"):
                    os.unlink(os.path.join(log_dir, old))
        else:
            print(probe_text, file=sys.stderr)
            hint = ""
            if "ModuleNotFoundError" in probe_text:
                hint = ("; is %s importable by %s? (an in-tree qloop needs "
                        "PYTHONPATH=build/epoll/inplace)"
                        % (args.loop.partition(":")[0], sys.executable))
            return die("cannot create and close a loop with %s (above)%s"
                       % (args.loop, hint))
        print("conformance: Python %s (%s), loop %s -> %s, %d tests, -j%d, "
              "timeout %gs" % (PYVER, sys.executable, args.loop,
                               probe_text.splitlines()[-1], len(tests),
                               args.jobs, args.timeout), file=sys.stderr)
        print("conformance: expectations %s (%d entries)"
              % (shown(exp_path), len(expected)), file=sys.stderr)

        width = len(str(len(tests)))

        def progress(done, total, test_id, record):
            reason = expected.get(test_id)
            v = verdict(record, reason)
            if args.quiet and v in ("ok", "skip", "expected"):
                return
            note = {"new-failure": "  NEW FAILURE",
                    "unexpected-pass": "  UNEXPECTED PASS",
                    "todo": "  (expectation reason is TODO)",
                    "expected": "  (expected)"}.get(v, "")
            detail = record["detail"] if record["outcome"] != "pass" else ""
            print("[%*d/%d] %-7s %s %.1fs%s%s"
                  % (width, done, total, record["outcome"], test_id,
                     record["duration"], note,
                     ("\n          " + detail) if detail and v != "skip"
                     else ""), file=sys.stderr, flush=True)

        # Known failures first: a known hang then overlaps the rest instead
        # of being the last thing the run waits for.
        order = sorted(tests, key=lambda t: t[0] not in expected)
        records = run_all(runner, order, args.jobs, 0, len(tests), progress)

        # Re-run new failures: under load on two cores a timing-sensitive
        # test can fail once; one that passes again is reported as flaky.
        attempts = {test_id: [rec] for test_id, rec in records.items()}
        retry = [t for t in tests
                 if verdict(records[t[0]], expected.get(t[0])) ==
                 "new-failure"]
        retried = False
        for attempt in range(1, args.retries + 1):
            if not retry:
                break
            if len(retry) > RETRY_CAP:
                print("conformance: %d new failures: not re-running them "
                      "(more than %d)" % (len(retry), RETRY_CAP),
                      file=sys.stderr)
                break
            retried = True
            print("conformance: re-running %d new failure(s), attempt %d"
                  % (len(retry), attempt), file=sys.stderr)
            again = run_all(runner, retry, args.jobs, attempt, len(retry),
                            progress)
            for test_id, rec in again.items():
                attempts[test_id].append(rec)
                records[test_id] = rec
            retry = [t for t in retry if records[t[0]]["outcome"] != "pass"]
    except KeyboardInterrupt:
        runner.kill_all()
        print("conformance: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    wall = time.monotonic() - started

    if args.update_expectations:
        if not filters:
            for test_id in stale:
                del expected[test_id]
            stale = []
        for test_id, _ in tests:
            outcome = records[test_id]["outcome"]
            if outcome in FAILING:
                expected.setdefault(test_id, TODO_REASON)
            elif outcome == "pass" and not is_flaky(expected.get(test_id,
                                                                 "")):
                expected.pop(test_id, None)
        write_expectations(exp_path, header, expected, name, PYVER)
        print("conformance: wrote %s (%d entries, %d with a TODO reason)"
              % (shown(exp_path), len(expected),
                 sum(is_todo(r) for r in expected.values())),
              file=sys.stderr)

    return report(args, tests, records, attempts, retried, expected, stale,
                  exp_path, wall)


def report(args, tests, records, attempts, retried, expected, stale,
           exp_path, wall):
    out = sys.stdout
    verdicts = {t: verdict(records[t], expected.get(t)) for t, _ in tests}
    flaky = [t for t, _ in tests if len(attempts[t]) > 1
             and records[t]["outcome"] == "pass"]

    # Per-group table.
    cols = OUTCOMES + ("expected", "unexp")
    rows = collections.OrderedDict()
    for test_id, group in tests:
        row = rows.setdefault(group_id(group), collections.Counter())
        row[records[test_id]["outcome"]] += 1
        v = verdicts[test_id]
        if v == "expected":
            row["expected"] += 1
        elif v in ("new-failure", "unexpected-pass", "todo"):
            row["unexp"] += 1
    gw = max(len(g) for g in rows)
    print("\n%-*s %s" % (gw, "group", " ".join("%8s" % c for c in cols)),
          file=out)
    total = collections.Counter()
    for g, row in rows.items():
        total.update(row)
        print("%-*s %s" % (gw, g, " ".join("%8d" % row[c] for c in cols)),
              file=out)
    print("%-*s %s" % (gw, "total", " ".join("%8d" % total[c] for c in cols)),
          file=out)

    def listing(title, ids, show):
        if ids:
            print("\n%s (%d):" % (title, len(ids)), file=out)
            for test_id in ids:
                print("  " + show(test_id), file=out)

    def failure_line(test_id):
        rec = records[test_id]
        text = "%s: %s (%s)" % (test_id, rec["outcome"], rec["detail"])
        if len(attempts[test_id]) > 1:
            text += ", %d runs: %s" % (len(attempts[test_id]), ", ".join(
                a["outcome"] for a in attempts[test_id]))
        logs = [a["log"] for a in attempts[test_id] if a["log"]]
        if logs:
            text += "\n      log: " + "\n           ".join(logs)
        return text

    by = lambda v: [t for t, _ in tests if verdicts[t] == v]
    listing("NEW FAILURES (not in %s)" % shown(exp_path),
            by("new-failure"), failure_line)
    listing("UNEXPECTED PASSES (listed as failing; delete their lines)",
            by("unexpected-pass"),
            lambda t: "%s  # %s" % (t, expected[t]))
    listing("EXPECTATIONS WITHOUT A REASON (replace the TODO in %s)"
            % shown(exp_path), by("todo"),
            lambda t: "%s: %s  # %s" % (t, records[t]["outcome"],
                                        expected[t]))
    listing("flaky (failed, then passed when re-run; counted as passed)",
            flaky, lambda t: "%s: first %s (%s)"
            % (t, attempts[t][0]["outcome"], attempts[t][0]["detail"]))
    if stale and not args.filter:
        listing("stale expectations (no such test in this Python; "
                "delete them)", stale, lambda t: t)

    passed = len(by("ok"))
    failed = sum(len(by(v)) for v in ("new-failure", "unexpected-pass",
                                      "todo"))
    skipped = len(by("skip"))
    n_expected = len(by("expected"))
    print("\nexpected failures: %d (%s%s)"
          % (n_expected, shown(exp_path),
             "" if os.path.exists(exp_path) else ": no such file"), file=out)
    print("time: %.1fs wall, %.1fs in tests, -j%d%s"
          % (wall, sum(r["duration"] for a in attempts.values() for r in a),
             args.jobs, ", with re-runs" if retried else ""), file=out)

    if args.json:
        doc = {
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "loop": args.loop,
            "expectations": shown(exp_path),
            "timeout": args.timeout,
            "jobs": args.jobs,
            "wall_time": round(wall, 3),
            "summary": {"passed": passed, "failed": failed,
                        "skipped": skipped, "expected_failures": n_expected,
                        "flaky": len(flaky)},
            "tests": [dict(id=t, group=group_id(g), verdict=verdicts[t],
                           expected_reason=expected.get(t),
                           attempts=attempts[t], **records[t])
                      for t, g in tests],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)),
                    exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)

    line = "conformance: %d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line, file=out, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
