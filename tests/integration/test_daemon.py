"""convoyd and convoyctl as an operator meets them: start on a config, reload
on SIGHUP (a broken file keeps the old config in force), stop on SIGTERM with
exit 0, refuse a bad config with 78, one daemon per queue, detach."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from convoy import CONVOYCTL, CONVOYD, Daemon, free_port


class DaemonLifecycle(unittest.TestCase):
    def test_reload_broken_config_keeps_old_then_clean_exit(self):
        port = free_port()
        with Daemon("smtpd_listen = 127.0.0.1:%d\ndns_tries = 2\n" % port) as d:
            d.start()
            d.wait_log("daemon started")
            # Break the file: a misspelt parameter on line 3.
            d.write_config("queue_directory = %s\nsmtpd_listen = 127.0.0.1:%d\nmynetwork = 10.0.0.0/8\n"
                           % (d.queue_dir, port))
            d.signal(signal.SIGHUP)
            d.wait_notify("RELOADING=1")
            ready = d.wait_notify("READY=1")
            self.assertIn("reload failed", ready)
            d.wait_log('convoy.conf:3: unknown parameter "mynetwork" (did you mean "mynetworks"?)')
            self.assertIn("reload failed, configuration unchanged", d.log_text())
            self.assertIsNone(d.proc.poll(), "convoyd died on a broken reload")

            # A good file is taken.
            d.write_config("queue_directory = %s\nsmtpd_listen = 127.0.0.1:%d\ndns_tries = 4\n"
                           % (d.queue_dir, port))
            d.signal(signal.SIGHUP)
            d.wait_notify("RELOADING=1")
            d.wait_notify("READY=1")
            d.wait_log("reload: configuration")
            self.assertIsNone(d.proc.poll())

            self.assertEqual(d.stop(), 0)
            d.wait_notify("STOPPING=1", timeout=5)
            log = d.log_text()
            self.assertIn("terminating on signal 15", log)
            self.assertIn("daemon stopped", log)

    def test_sigint_also_stops_cleanly(self):
        with Daemon("smtpd_listen = 127.0.0.1:%d\n" % free_port()) as d:
            d.start()
            d.signal(signal.SIGINT)
            self.assertEqual(d.proc.wait(20), 0)

    def test_bad_config_exits_78_naming_file_and_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "convoy.conf")
            with open(path, "w") as f:
                f.write("# ok\nmaximal_queue_lifetime = 5x\n")
            r = subprocess.run([CONVOYD, "-f", "-c", path], capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 78)
            self.assertIn('convoy.conf:2: bad value "5x" for maximal_queue_lifetime: expected a time', r.stderr)
            r = subprocess.run([CONVOYD, "--check-config", "-c", path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 78)
            with open(path, "w") as f:
                f.write("maximal_queue_lifetime = 5d\n")
            r = subprocess.run([CONVOYD, "--check-config", "-c", path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("configuration OK", r.stdout)
            r = subprocess.run([CONVOYD, "--check-config", "-c", path, "-o", "mynetworks=10.0.0.1/8"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 78)
            self.assertIn("-o mynetworks=10.0.0.1/8: bad value", r.stderr)
            r = subprocess.run([CONVOYD, "--no-such-flag"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 2)

    def test_one_daemon_per_queue(self):
        with Daemon("smtpd_listen = 127.0.0.1:%d\n" % free_port()) as d:
            d.start()
            r = subprocess.run([CONVOYD, "-f", "-c", d.conf_path], capture_output=True, text=True,
                               timeout=20)
            self.assertEqual(r.returncode, 1)
            self.assertIn("another convoyd (pid %d) is running" % d.proc.pid, r.stderr)
            self.assertEqual(d.stop(), 0)

    def test_detached_daemon_writes_pid_and_stops(self):
        with tempfile.TemporaryDirectory() as tmp:
            qdir = os.path.join(tmp, "q")
            conf = os.path.join(tmp, "convoy.conf")
            with open(conf, "w") as f:
                f.write("queue_directory = %s\nsmtpd_listen = 127.0.0.1:%d\n" % (qdir, free_port()))
            # Without -f the parent returns once the child is ready.
            r = subprocess.run([CONVOYD, "-c", conf], capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(qdir, "convoyd.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)  # running
            os.kill(pid, signal.SIGTERM)
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                self.fail("detached convoyd did not stop on SIGTERM")


class ControlSocket(unittest.TestCase):
    def test_status_and_reload_through_the_control_socket(self):
        port = free_port()
        with Daemon("smtpd_listen = 127.0.0.1:%d\n" % port) as d:
            r = d.ctl("status")
            self.assertEqual(r.returncode, 3)
            self.assertIn("convoyd is not running", r.stderr)
            r = d.ctl("status", "--json")
            self.assertEqual(r.returncode, 3)
            self.assertEqual(json.loads(r.stdout), {"running": False})

            d.start()
            sock = os.path.join(d.queue_dir, "control.sock")
            self.assertEqual(os.stat(sock).st_mode & 0o777, 0o660)
            r = d.ctl("status", "--json", check=True)
            st = json.loads(r.stdout)
            self.assertTrue(st["running"])
            self.assertEqual(st["pid"], d.proc.pid)
            self.assertEqual(st["config_file"], d.conf_path)
            self.assertGreaterEqual(st["uptime"], 0)
            r = d.ctl("status", check=True)
            self.assertIn("running: true", r.stdout)

            # A rejected reload says why and changes nothing.
            d.write_config("queue_directory = %s\nsmtpd_listen = 127.0.0.1:%d\ndns_tries = eleven\n"
                           % (d.queue_dir, port))
            r = d.ctl("reload")
            self.assertEqual(r.returncode, 1)
            self.assertIn('convoy.conf:3: bad value "eleven" for dns_tries: expected an integer', r.stderr)
            self.assertIsNone(d.proc.poll())

            d.write_config("queue_directory = %s\nsmtpd_listen = 127.0.0.1:%d\ndns_tries = 5\n"
                           % (d.queue_dir, port))
            r = d.ctl("reload")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "Configuration reloaded.\n")
            d.wait_log("reload: configuration")

            # Someone outside the daemon's user and group is turned away clearly.
            if os.geteuid() == 0 and shutil.which("setpriv"):
                os.chmod(d.dir, 0o755)
                os.chmod(d.conf_path, 0o644)
                r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                    CONVOYCTL, "-c", d.conf_path, "status"],
                                   capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("permission denied", r.stderr)

            self.assertEqual(d.stop(), 0)
            self.assertFalse(os.path.exists(sock), "control socket left behind")


class Convoyctl(unittest.TestCase):
    def run_ctl(self, *args):
        return subprocess.run([CONVOYCTL] + list(args), capture_output=True, text=True, timeout=30)

    def test_config_show(self):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "convoy.conf")
            with open(conf, "w") as f:
                f.write("myhostname = relay.example.com\nmynetworks = 10.0.0.0/8,\n  127.0.0.0/8\n")
            r = self.run_ctl("-c", conf, "config", "show", "-n")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "myhostname = relay.example.com\nmynetworks = 10.0.0.0/8, 127.0.0.0/8\n")
            r = self.run_ctl("-c", conf, "-o", "dns_tries=5", "config", "show", "-n", "dns_tries")
            self.assertEqual(r.stdout, "dns_tries = 5\n")
            r = self.run_ctl("-c", conf, "config", "show", "maximal_queue_lifetime", "message_size_limit")
            self.assertEqual(r.stdout, "maximal_queue_lifetime = 5d\nmessage_size_limit = 52428800\n")
            r = self.run_ctl("-c", conf, "config", "show", "--json")
            data = json.loads(r.stdout)
            self.assertEqual(data["myhostname"], "relay.example.com")
            self.assertEqual(data["mynetworks"], ["10.0.0.0/8", "127.0.0.0/8"])
            self.assertEqual(data["maximal_queue_lifetime"], 5 * 86400)
            self.assertEqual(data["message_size_limit"], 50 * 1024 * 1024)
            r = self.run_ctl("-c", conf, "config", "show", "mynetwork")
            self.assertEqual(r.returncode, 1)
            self.assertIn('unknown parameter "mynetwork"', r.stderr)

    def test_config_check_and_exit_codes(self):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "convoy.conf")
            with open(conf, "w") as f:
                f.write("dns_tries = 3\nsmtpd_listen = localhost\n")
            r = self.run_ctl("-c", conf, "config", "check")
            self.assertEqual(r.returncode, 1)
            self.assertIn('convoy.conf:2: bad value "localhost" for smtpd_listen', r.stderr)
            r = self.run_ctl("config", "check")  # built-in defaults
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(self.run_ctl("frobnicate").returncode, 2)
            self.assertEqual(self.run_ctl().returncode, 2)
            r = self.run_ctl("version")
            self.assertEqual(r.returncode, 0)
            self.assertRegex(r.stdout, r"^convoyctl \d+\.\d+\.\d+")


if __name__ == "__main__":
    unittest.main()
