/*
 * post.c - an HTTPS POST on the libuv loop with the policy fetcher's
 * machinery (fetch.c: DNS, tls_stream, TLS with the certificate verified
 * for the URL's host, http.c): how TLS reports go to an https: rua (RFC
 * 8460 5.2). Any 2xx is success; redirects are not followed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy_int.h"

struct policy_post {
    policy_post_cb cb;
    void *arg;
};

int policy_https_url_parse(const char *url, char *host, size_t host_size, uint16_t *port,
                           char *path, size_t path_size)
{
    if (strncasecmp(url, "https://", 8) != 0)
        return ERR_INVAL;
    const char *h = url + 8;
    size_t hl = strcspn(h, ":/?#");
    if (hl == 0 || hl >= host_size)
        return ERR_INVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    const char *s = h + hl;
    *port = 443;
    if (*s == ':') {
        char *end;
        unsigned long v = strtoul(s + 1, &end, 10);
        if (end == s + 1 || v == 0 || v > 65535)
            return ERR_INVAL;
        *port = (uint16_t)v;
        s = end;
    }
    if (*s == '#')
        s = "";
    if (*s == '\0') {
        str_copy(path, "/", path_size);
        return 0;
    }
    if (*s != '/' && *s != '?')
        return ERR_INVAL;
    /* The path and query as written, without a fragment; no spaces or
     * controls may reach the request line. */
    size_t n = strcspn(s, "#");
    if (n + 2 > path_size)
        return ERR_TOOBIG;
    size_t o = 0;
    if (*s == '?')
        path[o++] = '/';
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f)
            return ERR_INVAL;
        path[o++] = s[i];
    }
    path[o] = '\0';
    return 0;
}

static void post_done(void *arg, const struct fetch_result *r)
{
    struct policy_post *p = arg;
    struct policy_post_result res = {
        .status = r->status,
        .http_status = r->http_status,
        .why = r->why,
    };
    p->cb(p->arg, &res);
    free(p);
}

int policy_post(const struct policy_post_params *pp, policy_post_cb cb, void *arg)
{
    char host[POLICY_NAME_MAX], path[1024];
    uint16_t port;
    int rc = policy_https_url_parse(pp->url, host, sizeof(host), &port, path, sizeof(path));
    if (rc != 0)
        return rc;
    struct policy_post *p = calloc(1, sizeof(*p));
    if (!p)
        return ERR_NOMEM;
    p->cb = cb;
    p->arg = arg;
    struct fetch_params fp = {
        .loop = pp->loop,
        .dns = pp->dns,
        .tls = pp->tls,
        .port = pp->port ? pp->port : port,
        .timeout_ms = pp->timeout_ms ? pp->timeout_ms : 60000,
        .connect_timeout_ms = 10000,
        .max_body = 1,
        .user_agent = pp->user_agent,
        .post_host = host,
        .post_path = path,
        .post_body = pp->body,
        .post_len = pp->len,
        .post_type = pp->content_type,
    };
    if (!fetch_start(&fp, host, post_done, p)) {
        free(p);
        return ERR_NOMEM;
    }
    return 0;
}
