"""web.py - MTA-STS policy hosts for integration tests: a real nginx
(nginx-light), run as our own foreground process on a loopback address and a
free port, one HTTPS virtual host (SNI) per mta-sts.DOMAIN.

    from web import Web, Site
    web = Web(tmpdir, [
        Site("good.test", leaf, body=POLICY),                  # 200 text/plain
        Site("missing.test", leaf, status=404),
        Site("moved.test", leaf, redirect="https://mta-sts.good.test/.well-known/mta-sts.txt"),
        Site("html.test", leaf, body=POLICY, content_type="text/html"),
        Site("chunked.test", leaf, body=POLICY, chunked=True),
    ]).start()
    web.port          # the HTTPS port (sts_policy_https_port)
    web.set_body("good.test", NEW_POLICY)   # served from disk: no reload
    web.stop()

Each site presents the certificate it is given (leaf.chain / leaf.key): a
leaf for another name or a self-signed one makes a site whose certificate
is wrong. nginx's pid file, logs and temporary files live in the work
directory; nothing touches the system's nginx.
"""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Optional

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")


def free_port(host="127.0.0.1"):
    # The one port picker (it never hands out a port twice in one process).
    from convoy import free_port as pick
    return pick(host)


@dataclass
class Site:
    domain: str            # the policy domain; the host is mta-sts.DOMAIN
    leaf: object           # pki.Leaf with .chain and .key
    body: Optional[str] = None
    status: int = 200
    content_type: str = "text/plain"
    redirect: Optional[str] = None
    chunked: bool = False


class Web:
    def __init__(self, workdir, sites, host="127.0.0.1"):
        self.dir = os.path.join(os.path.abspath(workdir), "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.host = host
        self.sites = list(sites)
        self.port = None
        self.proc = None

    def _docroot(self, domain):
        return os.path.join(self.dir, "sites", domain)

    def set_body(self, domain, body):
        root = os.path.join(self._docroot(domain), ".well-known")
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, "mta-sts.txt")
        with open(path + ".tmp", "w", newline="") as f:
            f.write(body)
        os.rename(path + ".tmp", path)

    def _server_block(self, s):
        lines = [
            "server {",
            "  listen %s:%d ssl;" % (self.host, self.port),
            "  server_name mta-sts.%s;" % s.domain,
            "  ssl_certificate %s;" % s.leaf.chain,
            "  ssl_certificate_key %s;" % s.leaf.key,
            "  root %s;" % self._docroot(s.domain),
            "  location = /.well-known/mta-sts.txt {",
        ]
        if s.redirect:
            lines.append("    return 301 %s;" % s.redirect)
        elif s.status != 200:
            lines.append("    return %d;" % s.status)
        else:
            lines.append("    types { }")
            lines.append("    default_type \"%s\";" % s.content_type)
            if s.chunked:
                # SSI processing makes the length unknown: HTTP/1.1 chunked.
                lines.append("    ssi on;")
                lines.append("    ssi_types *;")
        lines += ["  }", "}"]
        return "\n".join(lines)

    def start(self):
        self.port = free_port(self.host)
        for s in self.sites:
            if s.body is not None:
                self.set_body(s.domain, s.body)
            else:
                os.makedirs(self._docroot(s.domain), exist_ok=True)
        d = self.dir
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, "tmp", sub), exist_ok=True)
        conf = "\n".join([
            "worker_processes 1;",
            "pid %s/nginx.pid;" % d,
            "error_log %s/error.log info;" % d,
            "events { worker_connections 64; }",
            "http {",
            "  access_log %s/access.log;" % d,
            "  client_body_temp_path %s/tmp/client_body;" % d,
            "  proxy_temp_path %s/tmp/proxy;" % d,
            "  fastcgi_temp_path %s/tmp/fastcgi;" % d,
            "  uwsgi_temp_path %s/tmp/uwsgi;" % d,
            "  scgi_temp_path %s/tmp/scgi;" % d,
            "  server_tokens off;",
            "  keepalive_timeout 5;",
        ] + [self._server_block(s) for s in self.sites] + ["}", ""])
        self.conf_path = os.path.join(d, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self.log = open(os.path.join(d, "stderr.log"), "ab")
        self.proc = subprocess.Popen(
            [NGINX, "-p", d, "-e", os.path.join(d, "error.log"), "-c", self.conf_path,
             "-g", "daemon off;"], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                text = self.error_text()
                self.stop()
                raise RuntimeError("nginx exited: " + text)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        text = self.error_text()
        self.stop()
        raise TimeoutError("nginx did not start: " + text)

    def error_text(self):
        out = ""
        for name in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    out += f.read().decode(errors="replace")
            except FileNotFoundError:
                pass
        return out

    def access_log(self):
        try:
            with open(os.path.join(self.dir, "access.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
