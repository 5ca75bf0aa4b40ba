/*
 * url.c - shared_state URLs and the pure arithmetic of the shared limits
 * (batch size of a grant, the fallback share). No I/O.
 *
 * Accepted: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (HOST a name, an
 * IPv4 address or a bracketed IPv6 address), rediss:// with the same
 * syntax (Redis over TLS: the client goes through tls_bridge.c, since
 * Debian 12's hiredis 0.14 has no TLS), unix:/PATH[?db=N].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared.h"

static int parse_uint(const char *s, size_t n, unsigned long max, unsigned long *out)
{
    if (n == 0 || n > 10)
        return -1;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static int bad(struct buf *err, const char *why)
{
    buf_printf(err, "shared_state: %s", why);
    return ERR_INVAL;
}

static int parse_unix(const char *p, struct shared_url *u, struct buf *err)
{
    u->kind = SHARED_URL_UNIX;
    const char *q = strchr(p, '?');
    size_t n = q ? (size_t)(q - p) : strlen(p);
    if (n == 0 || p[0] != '/')
        return bad(err, "unix: needs an absolute socket path (unix:/run/redis/redis.sock)");
    if (n >= sizeof(u->path))
        return bad(err, "unix: socket path too long");
    memcpy(u->path, p, n);
    u->path[n] = '\0';
    if (q) {
        unsigned long db;
        if (strncmp(q, "?db=", 4) != 0 || parse_uint(q + 4, strlen(q + 4), 1000000, &db) != 0)
            return bad(err, "unix: the only option is ?db=N");
        u->db = (unsigned)db;
    }
    snprintf(u->shown, sizeof(u->shown), "unix:%s%s", u->path, q ? q : "");
    return 0;
}

static int parse_tcp(const char *p, struct shared_url *u, struct buf *err)
{
    u->kind = SHARED_URL_TCP;
    u->port = 6379;
    /* [[USER]:PASSWORD@] */
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return bad(err, "credentials must be [USER]:PASSWORD@");
        size_t ul = (size_t)(colon - p), pl = (size_t)(at - colon - 1);
        if (ul >= sizeof(u->user) || pl >= sizeof(u->password))
            return bad(err, "user or password too long");
        memcpy(u->user, p, ul);
        u->user[ul] = '\0';
        memcpy(u->password, colon + 1, pl);
        u->password[pl] = '\0';
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    const char *host = p, *port = NULL;
    size_t hl;
    if (hp > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', hp);
        if (!close)
            return bad(err, "unterminated [IPv6 address]");
        host = p + 1;
        hl = (size_t)(close - host);
        if (close + 1 < p + hp) {
            if (close[1] != ':')
                return bad(err, "junk after ]");
            port = close + 2;
        }
    } else {
        const char *colon = memchr(p, ':', hp);
        hl = colon ? (size_t)(colon - p) : hp;
        if (colon)
            port = colon + 1;
    }
    if (hl == 0)
        return bad(err, "no host (redis://HOST:PORT/DB)");
    if (hl >= sizeof(u->host))
        return bad(err, "host name too long");
    memcpy(u->host, host, hl);
    u->host[hl] = '\0';
    for (size_t i = 0; i < hl; i++) {
        char c = u->host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '_'))
            return bad(err, "bad character in host");
    }
    if (port) {
        unsigned long v;
        if (parse_uint(port, (size_t)(p + hp - port), 65535, &v) != 0 || v == 0)
            return bad(err, "bad port");
        u->port = (uint16_t)v;
    }
    if (slash && slash[1]) {
        unsigned long db;
        if (parse_uint(slash + 1, strlen(slash + 1), 1000000, &db) != 0)
            return bad(err, "the path must be a database number (/0)");
        u->db = (unsigned)db;
    }
    bool v6 = strchr(u->host, ':') != NULL;
    char port_db[32];
    snprintf(port_db, sizeof(port_db), ":%u/%u", (unsigned)u->port, u->db);
    snprintf(u->shown, sizeof(u->shown), "%s://%.127s%s%s%.255s%s%s", u->tls ? "rediss" : "redis",
             u->user, u->user[0] || u->password[0] ? ":***@" : "", v6 ? "[" : "", u->host,
             v6 ? "]" : "", port_db);
    return 0;
}

int shared_url_parse(const char *s, struct shared_url *u, struct buf *err)
{
    memset(u, 0, sizeof(*u));
    if (!s || !s[0])
        return bad(err, "empty");
    if (strncmp(s, "rediss://", 9) == 0) {
        u->tls = true;
        return parse_tcp(s + 9, u, err);
    }
    if (strncmp(s, "redis://", 8) == 0)
        return parse_tcp(s + 8, u, err);
    if (strncmp(s, "unix:", 5) == 0)
        return parse_unix(s + 5, u, err);
    return bad(err, "must start with redis://, rediss:// or unix:");
}

unsigned shared_batch(size_t waiting, double rate_per_s)
{
    double cap = rate_per_s / 10.0;
    if (cap > 64)
        cap = 64;
    unsigned n = cap < 1 ? 1 : (unsigned)cap;
    if (waiting < n)
        n = waiting < 1 ? 1 : (unsigned)waiting;
    return n;
}

double shared_share(double configured, unsigned fleet)
{
    if (configured > 0 && configured <= 1)
        return configured;
    return 1.0 / (fleet < 1 ? 1 : fleet);
}
