"""Start and stop the real convoyd for integration tests.

Daemon(config_text) writes a config into a fresh directory (queue_directory
is set there unless the text sets it), starts `convoyd -f -c FILE` with
NOTIFY_SOCKET pointing at a datagram socket of ours, and waits for READY=1,
so a test knows the daemon is up without polling ports. Standard error (the
log) is collected in self.log_path; log_text() reads it.

CONVOY_TEST_WRAPPER, when set, is a command prefix (split like a shell
would) put before convoyd, for example
"valgrind --leak-check=full --error-exitcode=99 --log-file=/tmp/vg.%p".
CONVOY_TEST_CTL_WRAPPER does the same for the convoyctl runs of ctl().
CONVOY_TEST_TIMEOUT_SCALE (a number, default 1) multiplies how long the
harness waits for the daemon to become ready and to stop, for slow wrappers.
SANITIZED is true for a sanitizer build (or CONVOY_SANITIZED=1): long cases
run smaller there.
"""

import errno
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time

BIN = os.environ.get("CONVOY_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin"))
CONVOYD = os.path.join(BIN, "convoyd")
CONVOYCTL = os.path.join(BIN, "convoyctl")
WRAPPER = shlex.split(os.environ.get("CONVOY_TEST_WRAPPER", ""))
CTL_WRAPPER = shlex.split(os.environ.get("CONVOY_TEST_CTL_WRAPPER", ""))
TIMEOUT_SCALE = float(os.environ.get("CONVOY_TEST_TIMEOUT_SCALE", "1"))


def _sanitized():
    """Is the build under test a sanitizer build (CONVOY_SANITIZE=ON in
    the CMake cache of CONVOY_BUILD, or CONVOY_SANITIZED=1)? Long cases
    run smaller there."""
    if os.environ.get("CONVOY_SANITIZED"):
        return os.environ["CONVOY_SANITIZED"] not in ("", "0")
    build = os.environ.get("CONVOY_BUILD", os.path.join(os.path.dirname(BIN), ""))
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            return any(line.startswith("CONVOY_SANITIZE:BOOL=ON") for line in f)
    except OSError:
        return False


SANITIZED = _sanitized()


_handed_out = set()

# Every loopback address a test may listen on. The suites run side by side
# (ctest -j) and share the port space: a port free on the host that asked
# can be held on another test address by a concurrent suite's server (a
# sink on 127.0.0.14 for two minutes), and tests use one port on several
# hosts (smtp_destination_port is shared by all MX hosts).
_TEST_V4 = ["127.0.0.%d" % i for i in range(1, 255)]


def _bindable(fam, host, port):
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError as e:
            # ::1 absent (no IPv6 on lo): nothing can hold the port there
            return e.errno == errno.EADDRNOTAVAIL


def free_port(host="127.0.0.1"):
    """A TCP port that is free right now on host and on every loopback
    address tests use, and that this process has not handed out before:
    the kernel may give the same ephemeral port to two binds in a row once
    the first socket is closed, and a test that asks for three ports must
    get three different ones."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port in _handed_out:
            continue
        if not all(_bindable(socket.AF_INET, h, port) for h in _TEST_V4):
            continue
        if not _bindable(socket.AF_INET6, "::1", port):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no fresh free port on %s" % host)


class Daemon:
    def __init__(self, config_text="", workdir=None, extra_args=()):
        self.tmp = None
        if workdir is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="convoy-it-")
            workdir = self.tmp.name
        self.dir = workdir
        self.queue_dir = os.path.join(workdir, "queue")
        self.conf_path = os.path.join(workdir, "convoy.conf")
        self.log_path = os.path.join(workdir, "convoyd.log")
        if "queue_directory" not in config_text:
            config_text = "queue_directory = %s\n%s" % (self.queue_dir, config_text)
        self.write_config(config_text)
        self.extra_args = list(extra_args)
        self.proc = None
        self.notify_sock = None
        self.notifications = []

    def write_config(self, text):
        with open(self.conf_path, "w") as f:
            f.write(text)

    def start(self, timeout=20, wait_ready=True):
        sock_path = os.path.join(self.dir, "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_sock.bind(sock_path)
        # As systemd's: writable by a daemon that has given up root.
        os.chmod(sock_path, 0o777)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            WRAPPER + [CONVOYD, "-f", "-c", self.conf_path] + self.extra_args,
            stdout=self.log, stderr=self.log, env=env)
        if wait_ready:
            self.wait_notify("READY=1", timeout * TIMEOUT_SCALE)
        return self

    def wait_notify(self, what, timeout=20):
        """Wait until a notification containing `what` arrives; return it."""
        deadline = time.time() + timeout
        for n in self.notifications:
            if what in n:
                self.notifications.remove(n)
                return n
        while time.time() < deadline:
            exited = self.proc.poll() is not None
            self.notify_sock.settimeout(0.05 if exited else max(0.05, min(0.5, deadline - time.time())))
            try:
                msg = self.notify_sock.recv(4096).decode()
            except socket.timeout:
                if exited:
                    raise RuntimeError("convoyd exited with %s before %r:\n%s"
                                       % (self.proc.returncode, what, self.log_text()))
                continue
            if what in msg:
                return msg
            self.notifications.append(msg)
        raise TimeoutError("no %r from convoyd within %ss:\n%s" % (what, timeout, self.log_text()))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * TIMEOUT_SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode if self.proc else None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log_text():
                return True
            time.sleep(0.05)
        raise TimeoutError("%r not logged within %ss:\n%s" % (text, timeout, self.log_text()))

    def ctl(self, *args, check=False, input=None):
        """Run convoyctl with this daemon's config; returns CompletedProcess."""
        r = subprocess.run(CTL_WRAPPER + [CONVOYCTL, "-c", self.conf_path] + list(args),
                           capture_output=True,
                           text=True, input=input, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError("convoyctl %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
        return r

    def close(self):
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        finally:
            if self.notify_sock:
                self.notify_sock.close()
            if getattr(self, "log", None):
                self.log.close()
            if self.tmp:
                self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
